-- The vault: sessions, their numbered snapshot generations, and content-addressed chunks.

CREATE TABLE sessions (
    id              text PRIMARY KEY,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- Generation numbers are handed out from here and never reused, even after a delete.
    next_generation bigint NOT NULL DEFAULT 1
);

-- A row exists only for a committed generation: it is inserted in one statement after all of
-- its chunks are stored, so a reader never sees a half-written snapshot.
CREATE TABLE snapshots (
    session_id      text NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    generation      bigint NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    kind            text NOT NULL CHECK (kind IN ('periodic', 'shutdown', 'manual', 'import')),
    login_state     text CHECK (login_state IN ('ready', 'qr')),
    format_version  integer NOT NULL,
    manifest        bytea NOT NULL,
    manifest_sha256 bytea NOT NULL,
    content_digest  bytea NOT NULL,
    files           integer NOT NULL,
    bytes_raw       bigint NOT NULL,
    bytes_stored    bigint NOT NULL,
    bytes_uploaded  bigint NOT NULL,
    chunks_total    integer NOT NULL,
    chunks_new      integer NOT NULL,
    chunks_reused   integer NOT NULL,
    duration_ms     integer NOT NULL,
    PRIMARY KEY (session_id, generation)
);

-- Chunks are scoped to a session: deleting a session drops its data, and garbage collection
-- of one session never has to read another's manifests.
CREATE TABLE chunks (
    session_id  text NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    digest      bytea NOT NULL CHECK (length(digest) = 32),
    size        integer NOT NULL CHECK (size > 0),
    stored_size integer NOT NULL,
    codec       text NOT NULL,
    data        bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, digest)
);

-- Chunk data is already zstd-compressed: keep PostgreSQL from trying to compress it again.
ALTER TABLE chunks ALTER COLUMN data SET STORAGE EXTERNAL;
ALTER TABLE snapshots ALTER COLUMN manifest SET STORAGE EXTERNAL;
