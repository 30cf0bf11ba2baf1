-- Upload leases (concurrent-upload slots and the storage they reserve) and
-- the monthly AI counters.

CREATE TABLE upload_leases (
    id             uuid PRIMARY KEY,
    account_id     uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    -- 'stream' for streaming uploads, 'presigned' for presigned ones.
    kind           text NOT NULL CHECK (kind IN ('stream', 'presigned')),
    -- Bytes of quota this lease holds (also counted in accounts.storage_reserved_bytes).
    reserved_bytes bigint NOT NULL DEFAULT 0 CHECK (reserved_bytes >= 0),
    -- The object being written under this lease and its multipart upload,
    -- if any, so that the reaper can remove them when the lease dies.
    object_key     text,
    multipart_upload_id text,
    -- A small object of the same request still being finished (its single
    -- PUT in flight) while the next file is received.
    finishing_key  text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- Renewed while the upload runs; past it, the lease is dead and reclaimable.
    expires_at     timestamptz NOT NULL
);

CREATE INDEX upload_leases_account_idx ON upload_leases (account_id, expires_at);
CREATE INDEX upload_leases_expiry_idx ON upload_leases (expires_at);

CREATE TABLE monthly_usage (
    account_id      uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    -- First day of the calendar month (UTC).
    month           date NOT NULL,
    ai_descriptions integer NOT NULL DEFAULT 0 CHECK (ai_descriptions >= 0),
    chat_messages   integer NOT NULL DEFAULT 0 CHECK (chat_messages >= 0),
    PRIMARY KEY (account_id, month)
);
