-- Ownership of a session: a lease with an expiry on the database clock and a fencing token.
-- Every acquisition increments lease_token; a snapshot written with an older token than the
-- session's current one is refused, so a paused former owner can never add a generation.

ALTER TABLE sessions
    ADD COLUMN owner              text,
    ADD COLUMN lease_token        bigint NOT NULL DEFAULT 0,
    ADD COLUMN lease_expires_at   timestamptz,
    -- When the last owner began to hand over (its SIGTERM), to time the hand-over.
    ADD COLUMN handover_started_at timestamptz;

ALTER TABLE snapshots ADD COLUMN lease_token bigint;

CREATE FUNCTION sessionkeeper_fence_snapshot() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    current_token bigint;
BEGIN
    IF NEW.lease_token IS NULL THEN
        RETURN NEW;  -- a manual snapshot or an import, outside any lease
    END IF;
    SELECT lease_token INTO current_token FROM sessions WHERE id = NEW.session_id;
    IF NEW.lease_token < current_token THEN
        RAISE EXCEPTION 'stale fencing token % for session % (current %)',
            NEW.lease_token, NEW.session_id, current_token
            USING ERRCODE = 'SK001';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER snapshots_fence BEFORE INSERT ON snapshots
    FOR EACH ROW EXECUTE FUNCTION sessionkeeper_fence_snapshot();
