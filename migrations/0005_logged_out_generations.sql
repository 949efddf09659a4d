-- A generation whose login the phone has revoked ("logged out" or "unlinked") is labelled
-- 'logged_out': it is kept (for inspection and export) but never restored again.
ALTER TABLE snapshots DROP CONSTRAINT snapshots_login_state_check;
ALTER TABLE snapshots ADD CONSTRAINT snapshots_login_state_check
    CHECK (login_state IN ('ready', 'qr', 'logged_out'));
