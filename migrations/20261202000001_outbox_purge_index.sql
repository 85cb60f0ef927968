-- An instance reads the newest purge of everything from the change log before it serves
-- (`Store::purge_generation`); this keeps that read an index lookup however long the log is.
CREATE INDEX outbox_purge_all_idx ON outbox (id) WHERE event_type = 'purge.all';
