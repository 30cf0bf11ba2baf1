-- A batch may finish several small files at once (their single PUTs in
-- flight while the next file is received): the lease tracks all of them,
-- so that the reaper removes each if the instance dies.
ALTER TABLE upload_leases ADD COLUMN finishing_keys text[] NOT NULL DEFAULT '{}';
UPDATE upload_leases SET finishing_keys = ARRAY[finishing_key] WHERE finishing_key IS NOT NULL;
ALTER TABLE upload_leases DROP COLUMN finishing_key;
