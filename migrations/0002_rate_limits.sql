-- GCRA state: one row per limited subject ("a:<account id>" or "ip:<address>").
--
-- tat is the theoretical arrival time of the next request; a row whose tat is
-- in the past is the same as no row. The table is UNLOGGED: it is written on
-- every limited request, and losing it in a database crash only forgives a
-- minute of requests.
CREATE UNLOGGED TABLE rate_limits (
    key         text PRIMARY KEY,
    tat         timestamptz NOT NULL,
    -- How many of the requests of the last decision were let through, and
    -- the emission interval it used (read back by RETURNING).
    granted     bigint NOT NULL,
    interval_ns bigint NOT NULL
);
