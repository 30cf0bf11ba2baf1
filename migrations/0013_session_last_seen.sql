-- When a session was last used, to end it once idle for
-- SESSION_IDLE_TIMEOUT_SECS. Moved at most once a minute while in use; in
-- no index, so that write can stay a heap-only update.
ALTER TABLE sessions ADD COLUMN last_seen_at timestamptz NOT NULL DEFAULT now();
