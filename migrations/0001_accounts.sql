-- Accounts, login sessions and API keys.

CREATE TABLE accounts (
    id                     uuid PRIMARY KEY,
    email                  text NOT NULL,
    -- argon2id PHC string; NULL for accounts an admin created without a password.
    password_hash          text,
    tier                   text NOT NULL DEFAULT 'free'
                           CHECK (tier IN ('free', 'starter', 'professional', 'enterprise')),
    -- Overrides of single rows of the tier table (validated by the server).
    custom_limits          jsonb NOT NULL DEFAULT '{}'::jsonb
                           CHECK (jsonb_typeof(custom_limits) = 'object'),
    -- Bytes of recorded files, and bytes reserved by uploads in flight.
    storage_used_bytes     bigint NOT NULL DEFAULT 0 CHECK (storage_used_bytes >= 0),
    storage_reserved_bytes bigint NOT NULL DEFAULT 0 CHECK (storage_reserved_bytes >= 0),
    created_at             timestamptz NOT NULL DEFAULT now()
);

-- E-mail addresses are unique whatever their case.
CREATE UNIQUE INDEX accounts_email_key ON accounts (lower(email));

CREATE TABLE sessions (
    id          uuid PRIMARY KEY,
    account_id  uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);

CREATE INDEX sessions_account_idx ON sessions (account_id);

CREATE TABLE api_keys (
    -- The public 8-character id inside the key (ik_<id>_<secret>).
    id            text PRIMARY KEY CHECK (id ~ '^[a-z0-9]{8}$'),
    account_id    uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name          text NOT NULL,
    -- SHA-256 of the secret half; the secret itself is never stored.
    secret_sha256 bytea NOT NULL CHECK (length(secret_sha256) = 32),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);

CREATE INDEX api_keys_account_idx ON api_keys (account_id, created_at) WHERE revoked_at IS NULL;
