-- The files in the byte order of their object keys (the order object
-- stores list them in), so that `intake admin reconcile` pages through
-- the rows beside the bucket's listing whatever the database's collation.
CREATE INDEX files_object_key_bytes_idx ON files (object_key COLLATE "C");
