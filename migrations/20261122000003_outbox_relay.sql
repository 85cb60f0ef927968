-- The invalidation relay: every write transaction appends ONE outbox row carrying the cache keys
-- it made stale (payload.keys) and the instance that wrote it (origin). A relay publishes its own
-- instance's rows at once and any instance's rows left unpublished for a while (a writer that
-- crashed between commit and publish), in id order, then records where each landed.
ALTER TABLE outbox ADD COLUMN origin text;
ALTER TABLE outbox ADD COLUMN stream_position text;
ALTER TABLE outbox ADD CONSTRAINT outbox_published_has_position
    CHECK (published_at IS NULL OR stream_position IS NOT NULL);
