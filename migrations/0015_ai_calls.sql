-- AI calls (describes, chats) running now, one row each, so that every
-- instance counts an account's calls at once against one bound. A row is
-- renewed while its call runs; past expires_at it no longer counts. UNLOGGED:
-- a database crash only forgets calls that were running.
CREATE UNLOGGED TABLE ai_calls (
    id         uuid PRIMARY KEY,
    account_id uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL
);

CREATE INDEX ai_calls_account_idx ON ai_calls (account_id);
