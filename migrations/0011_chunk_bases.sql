-- Delta chunks: a chunk may be stored as a zstd frame compressed against another chunk of the
-- same session (its base, whose raw bytes are the frame's dictionary): codec `zstd-delta`.
-- A LevelDB compaction rewrites tables whose blocks mostly hold the old ones' records; a
-- changed block stored against its old version costs about the records that are new.
-- A base is always a chunk stored whole (never a delta itself), so a delta needs one other row;
-- garbage collection keeps every base a kept delta names.
ALTER TABLE chunks ADD COLUMN base bytea CHECK (base IS NULL OR length(base) = 32);
