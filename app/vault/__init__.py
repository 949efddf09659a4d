"""The vault: profile snapshots in PostgreSQL (save, restore, retention, export/import)."""
