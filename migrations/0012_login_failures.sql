-- Failed logins per e-mail address, whatever address they came from: each
-- attempt counts when it starts and a success deletes the row, so a row is
-- a streak of failures. The address is kept as the SHA-256 of its parsed
-- form: what people type into the field (a password, at times) is never
-- stored.
CREATE TABLE login_failures (
    email_sha256 bytea PRIMARY KEY CHECK (length(email_sha256) = 32),
    -- Attempts of the streak.
    failures     integer NOT NULL,
    -- Delays the streak has earned (the next lasts a minute times 2^delays).
    delays       integer NOT NULL,
    -- Logins of the address are refused until then.
    locked_until timestamptz,
    -- The streak is forgotten then: 15 minutes after its first failure, or
    -- after its last delay ended.
    expires_at   timestamptz NOT NULL,
    -- Whether the last attempt was refused (read back by RETURNING).
    refused      boolean NOT NULL
);

CREATE INDEX login_failures_expiry_idx ON login_failures (expires_at);
