"""Advisory lock keys (two-int form: a class id for sessionkeeper, then an object id)."""

_CLASS = 0x534B  # "SK"

# Held while migrations run.
MIGRATION_LOCK = (_CLASS, 1)

# Per session, under class _CLASS + 1 and hashtext(session_id): writers and readers take it
# shared for the whole upload or restore; garbage collection takes it exclusive, so it never
# removes a chunk that an unfinished snapshot has counted on.
CHUNK_LOCK_CLASS = _CLASS + 1
