-- Upload tokens: short-lived credentials a host hands to its own users'
-- browsers, which open only the upload routes, within limits of their own
-- on top of the account's.

CREATE TABLE upload_tokens (
    -- The public half of `iut_<id>_<secret>`.
    id              text PRIMARY KEY,
    account_id      uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    -- SHA-256 of the secret half, as for API keys.
    secret_sha256   bytea NOT NULL CHECK (length(secret_sha256) = 32),
    -- The host's user id, recorded on every file uploaded with the token.
    subject         text,
    -- A JSON object (at most 4 KiB), recorded on every file as well. Kept
    -- as the text it was given (json, not jsonb): jsonb takes no \u0000 and
    -- writes numbers back in a form that may not read as a double again.
    metadata        json CHECK (metadata IS NULL OR json_typeof(metadata) = 'object'),
    -- The categories its files may be of (all three unless narrowed).
    categories      text[] NOT NULL
                    CHECK (cardinality(categories) > 0
                           AND categories <@ ARRAY['image', 'document', 'video']),
    -- NULL: nothing beyond the account's own limits.
    max_files       integer CHECK (max_files >= 1),
    max_bytes       bigint CHECK (max_bytes >= 1),
    -- Files recorded with the token, and their bytes.
    files_used      integer NOT NULL DEFAULT 0 CHECK (files_used >= 0),
    bytes_used      bigint NOT NULL DEFAULT 0 CHECK (bytes_used >= 0),
    -- Held by uploads in flight (the sum of the token's holds below).
    files_reserved  integer NOT NULL DEFAULT 0 CHECK (files_reserved >= 0),
    bytes_reserved  bigint NOT NULL DEFAULT 0 CHECK (bytes_reserved >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    revoked_at      timestamptz
);

-- GET /upload-tokens: the account's live tokens, oldest first.
CREATE INDEX upload_tokens_account_idx ON upload_tokens (account_id, created_at, id)
    WHERE revoked_at IS NULL;

-- What each upload lease holds of its token's limits, so that whatever ends
-- the lease (its upload, an abort, the reaper) gives it back. A lease ends
-- only with its hold: the reference is checked when the ending transaction
-- commits.
CREATE TABLE upload_token_holds (
    lease_id  uuid PRIMARY KEY REFERENCES upload_leases (id) DEFERRABLE INITIALLY DEFERRED,
    token_id  text NOT NULL REFERENCES upload_tokens (id) ON DELETE CASCADE,
    files     integer NOT NULL DEFAULT 0 CHECK (files >= 0),
    bytes     bigint NOT NULL DEFAULT 0 CHECK (bytes >= 0)
);

CREATE INDEX upload_token_holds_token_idx ON upload_token_holds (token_id);

-- The uploads that outlive their request remember the token that started
-- them: only that token (or the account itself) continues them.
ALTER TABLE presigned_uploads ADD COLUMN upload_token_id text;
ALTER TABLE tus_uploads ADD COLUMN upload_token_id text;
CREATE INDEX presigned_uploads_token_idx ON presigned_uploads (upload_token_id)
    WHERE upload_token_id IS NOT NULL AND state = 'pending';
CREATE INDEX tus_uploads_token_idx ON tus_uploads (upload_token_id)
    WHERE upload_token_id IS NOT NULL AND state = 'open';

-- Files carry the subject and metadata of the token they were uploaded with.
ALTER TABLE files ADD COLUMN subject text;
ALTER TABLE files ADD COLUMN metadata json;
CREATE INDEX files_account_subject_idx ON files (account_id, subject, created_at DESC, id DESC)
    WHERE subject IS NOT NULL;
