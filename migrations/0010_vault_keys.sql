-- Encryption at rest: the store's addressing secret (chunk addresses are HMACs keyed by it),
-- sealed under each vault key that may open the store. Rotating the key adds a row for the
-- new key and drops the old one once every chunk and manifest is re-sealed; the secret itself
-- never changes, so no chunk changes its address. No row: a plaintext store.
CREATE TABLE vault_keys (
    key_id      text PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{16}$'),
    addressing  bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
