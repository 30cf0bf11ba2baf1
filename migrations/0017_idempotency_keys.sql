-- Idempotency keys: a request sent with an Idempotency-Key holds its key
-- while it runs (holder set, expires_at renewed), then keeps its answer
-- (status, the headers that name what it made, body) for
-- IDEMPOTENCY_TTL_SECS, and every later request with the key gets that
-- answer. A key belongs to the account, the method and the path. Past
-- expires_at the key is free (a request with it runs anew) and the
-- reaper's prune deletes the row.
CREATE TABLE idempotency_keys (
    account_id   uuid        NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    key          text        NOT NULL,
    method       text        NOT NULL,
    path         text        NOT NULL,
    -- SHA-256 of the request's body, on routes that compare bodies.
    request_hash bytea,
    -- The running request that holds the key; NULL once its answer is kept.
    holder       uuid,
    status       smallint,
    headers      jsonb,
    body         bytea,
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (account_id, key, method, path),
    CHECK ((holder IS NULL) = (status IS NOT NULL))
);

CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);
