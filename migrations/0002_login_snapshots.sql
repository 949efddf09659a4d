-- A snapshot taken right after a login (the browser closed so everything reached the disk).
ALTER TABLE snapshots DROP CONSTRAINT snapshots_kind_check;
ALTER TABLE snapshots ADD CONSTRAINT snapshots_kind_check
    CHECK (kind IN ('periodic', 'shutdown', 'manual', 'import', 'login'));
