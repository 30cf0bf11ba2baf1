-- Resumable uploads (tus 1.0). The slot and the reservation live in the
-- upload lease, as for the other paths; this row holds the protocol state
-- that lets any instance resume the upload.

-- A third kind of lease: an open tus upload, from creation to completion,
-- termination or expiry.
ALTER TABLE upload_leases DROP CONSTRAINT upload_leases_kind_check;
ALTER TABLE upload_leases ADD CONSTRAINT upload_leases_kind_check
    CHECK (kind IN ('stream', 'presigned', 'tus'));
-- The small object that holds a resumable upload's bytes not yet in a
-- whole part, so that ending the lease (or the reaper) removes it too.
ALTER TABLE upload_leases ADD COLUMN tail_key text;

CREATE TABLE tus_uploads (
    -- Also the id of the file it becomes (and the last part of its object key).
    id                  uuid PRIMARY KEY,
    account_id          uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    lease_id            uuid NOT NULL,
    filename            text NOT NULL,
    -- The client's filetype metadata ('' when none).
    declared_type       text NOT NULL DEFAULT '',
    -- The raw Upload-Metadata header, echoed on HEAD.
    metadata            text NOT NULL DEFAULT '',
    length              bigint NOT NULL CHECK (length > 0),
    -- Storage's multipart upload (the local folder's assembly file).
    -- (NULL until the first whole part is stored; a file smaller than a part
    -- is stored with one PUT at the end).
    multipart_upload_id text,
    -- Bytes per part (every part but the last; text documents may cut a
    -- part a few bytes short, at a character boundary).
    part_size           bigint NOT NULL CHECK (part_size > 0),
    -- Whole parts stored, and the bytes they hold.
    parts               integer NOT NULL DEFAULT 0 CHECK (parts >= 0),
    stored              bigint NOT NULL DEFAULT 0 CHECK (stored >= 0),
    -- Bytes received past the last part, kept in the tail object.
    tail_len            bigint NOT NULL DEFAULT 0 CHECK (tail_len >= 0),
    -- SHA-256 of the stored parts so far: the eight state words and the
    -- bytes (under 64) not yet compressed.
    sha_state           bytea NOT NULL,
    sha_rest            bytea NOT NULL DEFAULT '\x',
    -- The type decided from the first bytes; NULL until they have arrived.
    content_type        text,
    category            text CHECK (category IN ('image', 'document', 'video')),
    is_text             boolean,
    state               text NOT NULL DEFAULT 'open'
                        CHECK (state IN ('open', 'completed', 'terminated', 'failed')),
    -- The one PATCH that may write right now, and until when it holds the
    -- upload unless it renews.
    patch_token         uuid,
    patch_until         timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    -- TUS_EXPIRY_SECS after the last byte stored.
    expires_at          timestamptz NOT NULL,
    CHECK (stored + tail_len <= length)
);

CREATE INDEX tus_uploads_account_idx ON tus_uploads (account_id, created_at);
