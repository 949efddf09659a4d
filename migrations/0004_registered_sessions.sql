-- Claim mode: sessions registered for any replica to claim, each with an optional target.
ALTER TABLE sessions
    ADD COLUMN registered boolean NOT NULL DEFAULT false,
    ADD COLUMN target     text;

CREATE INDEX sessions_claimable ON sessions (id) WHERE registered;
