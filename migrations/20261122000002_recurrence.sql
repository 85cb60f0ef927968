-- Recurring series. A master row carries the rule; `series_end` is the end of its last occurrence
-- (NULL for an infinite series), written by the application from the rule, so that "which series
-- can touch this window" is an index range instead of an expansion of every series.
ALTER TABLE events ADD COLUMN series_end timestamptz;
ALTER TABLE events ADD CONSTRAINT events_series_end_only_for_series CHECK (series_end IS NULL OR rrule IS NOT NULL);
ALTER TABLE events ADD CONSTRAINT events_series_end_after_start CHECK (series_end IS NULL OR series_end >= end_time);

-- Live series masters of a calendar, by first start: few per calendar, so the month view reads them
-- all with one short range scan.
CREATE INDEX events_calendar_series_idx ON events (calendar_id, start_time)
    INCLUDE (series_end) WHERE rrule IS NOT NULL AND deleted_at IS NULL;
-- Live series an organizer runs (free/busy).
CREATE INDEX events_organizer_series_idx ON events (organizer_id)
    INCLUDE (series_end) WHERE rrule IS NOT NULL AND deleted_at IS NULL;
