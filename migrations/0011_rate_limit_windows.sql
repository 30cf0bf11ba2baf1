-- The window a subject's limit is counted over, beside its interval: a
-- minute for the per-minute limits, an hour for sign-ups per address.
-- Existing rows are per-minute ones.
ALTER TABLE rate_limits ADD COLUMN window_ns bigint NOT NULL DEFAULT 60000000000;
