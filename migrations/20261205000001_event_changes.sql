-- Incremental sync (`Query.changes`). A sync token is a PostgreSQL snapshot: "changed after the
-- token" means "written by a transaction that snapshot did not see". Row ids are taken before a
-- transaction commits, so id order is not commit order and "id > n" would skip a transaction
-- that committed late; transaction ids checked against a snapshot skip nothing.

-- The writing transaction of every change-log row.
ALTER TABLE outbox ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();

-- One row per stored event (single event, series master or override) a write transaction
-- changed, in that transaction, beside its change-log row and pruned with it.
CREATE TABLE event_changes (
    outbox_id   bigint NOT NULL REFERENCES outbox (id) ON DELETE CASCADE,
    calendar_id bigint NOT NULL,
    event_id    bigint NOT NULL,
    xid         xid8   NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (calendar_id, xid, event_id, outbox_id)
);
CREATE INDEX event_changes_outbox_idx ON event_changes (outbox_id);

-- The newest transaction whose change-log row the pruner deleted: a token whose snapshot's xmin
-- is not above it may have missed a deleted row, so it has expired (`SYNC_TOKEN_EXPIRED`).
CREATE TABLE change_log_horizon (
    only_row   boolean PRIMARY KEY DEFAULT true CONSTRAINT change_log_horizon_one_row CHECK (only_row),
    pruned_xid xid8 NOT NULL
);

-- The key sync tokens are signed with (HMAC-SHA256), the same for every instance and kept
-- with the data it protects: 32 bytes from PostgreSQL's strong random source.
CREATE TABLE sync_token_key (
    only_row boolean PRIMARY KEY DEFAULT true CONSTRAINT sync_token_key_one_row CHECK (only_row),
    key      bytea NOT NULL
);
INSERT INTO sync_token_key (key)
VALUES (decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));

-- A full sync pages through a calendar's live rows by id.
CREATE INDEX events_calendar_live_id_idx ON events (calendar_id, id) WHERE deleted_at IS NULL;
