-- Presigned uploads: issued URLs whose bytes go straight to storage. The
-- slot and the reservation live in the upload lease; this row remembers
-- what was declared, to verify it at completion.
CREATE TABLE presigned_uploads (
    -- Also the id of the file it becomes (and the last part of its object key).
    id                  uuid PRIMARY KEY,
    account_id          uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    lease_id            uuid NOT NULL,
    filename            text NOT NULL,
    content_type        text NOT NULL,
    category            text NOT NULL CHECK (category IN ('image', 'document', 'video')),
    size                bigint NOT NULL CHECK (size > 0),
    sha256              bytea CHECK (sha256 IS NULL OR length(sha256) = 32),
    multipart_upload_id text,
    part_size           bigint,
    state               text NOT NULL DEFAULT 'pending'
                        CHECK (state IN ('pending', 'completed', 'aborted', 'failed')),
    created_at          timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL
);

CREATE INDEX presigned_uploads_account_idx ON presigned_uploads (account_id, created_at);
