-- A write without a lease token (the CLI's snapshot or import) is refused while a process
-- holds the session's unexpired lease: it would race the owner and could become the newest
-- generation under a running daemon. `SET LOCAL sessionkeeper.force = on` in the writing
-- transaction lets it through (`--force`). A token older than the session's is refused as
-- before (SK001).

CREATE OR REPLACE FUNCTION sessionkeeper_fence_snapshot() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    current_token bigint;
    holder        text;
    left_s        float8;
BEGIN
    SELECT lease_token, owner, extract(epoch FROM lease_expires_at - now())::float8
      INTO current_token, holder, left_s
      FROM sessions WHERE id = NEW.session_id;
    IF NEW.lease_token IS NULL THEN
        IF holder IS NOT NULL AND left_s > 0
           AND current_setting('sessionkeeper.force', true) IS DISTINCT FROM 'on' THEN
            RAISE EXCEPTION 'session % is held by % (lease token %, %s left): a write outside its lease is refused; stop that process first, or pass --force',
                NEW.session_id, holder, current_token, round(left_s::numeric, 1)
                USING ERRCODE = 'SK002';
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.lease_token < current_token THEN
        RAISE EXCEPTION 'stale fencing token % for session % (current %)',
            NEW.lease_token, NEW.session_id, current_token
            USING ERRCODE = 'SK001';
    END IF;
    RETURN NEW;
END
$$;
