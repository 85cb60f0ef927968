-- A resource's bookings version: bumped by every statement that books, moves, cancels or deletes
-- a reservation of it, whatever code path runs that statement. It is the cache generation of the
-- resource's availability (`v1:resource:{id}:g{bookings_version}:availability:{date}`) and the
-- version of the cached resource itself, so a reader that sees the new version reads new
-- availability entries.
ALTER TABLE resources ADD COLUMN bookings_version bigint NOT NULL DEFAULT 1
    CONSTRAINT resources_bookings_version_positive CHECK (bookings_version >= 1);

CREATE FUNCTION resources_bump_bookings_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Rows locked in id order, so two transactions booking the same resources cannot deadlock
    -- on them. Transition tables: one bump per statement, however many rows it touched.
    IF TG_OP = 'INSERT' THEN
        UPDATE resources SET bookings_version = bookings_version + 1
        WHERE id IN (SELECT s.id FROM resources s WHERE s.id IN (SELECT resource_id FROM new_rows)
                     ORDER BY s.id FOR UPDATE);
    ELSIF TG_OP = 'UPDATE' THEN
        UPDATE resources SET bookings_version = bookings_version + 1
        WHERE id IN (SELECT s.id FROM resources s
                     WHERE s.id IN (SELECT resource_id FROM old_rows UNION SELECT resource_id FROM new_rows)
                     ORDER BY s.id FOR UPDATE);
    ELSE
        UPDATE resources SET bookings_version = bookings_version + 1
        WHERE id IN (SELECT s.id FROM resources s WHERE s.id IN (SELECT resource_id FROM old_rows)
                     ORDER BY s.id FOR UPDATE);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER reservations_bump_on_insert AFTER INSERT ON reservations
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION resources_bump_bookings_version();
CREATE TRIGGER reservations_bump_on_update AFTER UPDATE ON reservations
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION resources_bump_bookings_version();
CREATE TRIGGER reservations_bump_on_delete AFTER DELETE ON reservations
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION resources_bump_bookings_version();
