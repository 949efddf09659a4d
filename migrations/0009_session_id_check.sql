-- Session ids are names, never paths (app/session_ids.py holds the same pattern): claim mode
-- makes SESSIONKEEPER_PROFILE_DIR/<id> from them. snapshots and chunks reference sessions(id),
-- so this one constraint covers every table keyed by a session id.
-- A store may hold an id from before this rule. Its data stays, but it is no longer offered
-- to claim mode (registered = false), and the constraint is added NOT VALID so the store
-- still migrates; it is validated at once when no such row exists (the usual case). Such a
-- row can still be deleted; every write to it fails until then.
DO $$
DECLARE
    bad text;
BEGIN
    FOR bad IN SELECT id FROM sessions
                WHERE id !~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$' AND registered LOOP
        RAISE WARNING 'session id % is not a valid name: unregistered from claim mode',
            quote_literal(bad);
    END LOOP;
    UPDATE sessions SET registered = false
     WHERE id !~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$' AND registered;
END $$;

ALTER TABLE sessions ADD CONSTRAINT sessions_id_is_a_name
    CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$') NOT VALID;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM sessions WHERE id !~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$') THEN
        ALTER TABLE sessions VALIDATE CONSTRAINT sessions_id_is_a_name;
    END IF;
END $$;
