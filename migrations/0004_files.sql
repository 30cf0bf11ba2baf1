-- Stored files, and object deletions still to be done.

-- Case-insensitive substring search on filenames uses a trigram index.
CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public;

CREATE TABLE files (
    id           uuid PRIMARY KEY,
    account_id   uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    -- Display name only (never a path): no path components, no control characters.
    filename     text NOT NULL,
    content_type text NOT NULL,
    category     text NOT NULL CHECK (category IN ('image', 'document', 'video')),
    size         bigint NOT NULL CHECK (size >= 0),
    -- SHA-256 of the content; NULL for presigned uploads issued without one.
    sha256       bytea CHECK (sha256 IS NULL OR length(sha256) = 32),
    object_key   text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX files_account_newest_idx ON files (account_id, created_at DESC, id DESC);
CREATE INDEX files_account_category_idx ON files (account_id, category, created_at DESC, id DESC);
CREATE INDEX files_filename_trgm_idx ON files USING gin (lower(filename) public.gin_trgm_ops);

-- Objects whose file rows are gone but whose bytes may still be in storage:
-- deleted right away when storage answers, retried later when it does not.
CREATE TABLE object_deletions (
    object_key      text PRIMARY KEY,
    -- A multipart upload to abort first, when the object was never completed.
    multipart_upload_id text,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now()
);
