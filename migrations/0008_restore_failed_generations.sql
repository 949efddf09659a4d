-- A generation captured logged in that came up asking for a QR code when restored (a torn
-- or incomplete capture) is marked, not deleted: restore skips it and falls back to the
-- previous logged-in generation (SESSIONKEEPER_RESTORE_FALLBACKS); it stays for inspection.
ALTER TABLE snapshots ADD COLUMN restore_failed_at timestamptz;
