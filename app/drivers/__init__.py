"""What holds a kept session's profile while it runs: our own Chromium (`run`) or a child
process with a Chromium of its own (`exec`). The lifecycle around them (lease, restore,
snapshots, login bookkeeping, shutdown) is one piece, app/session.py, that both use."""
