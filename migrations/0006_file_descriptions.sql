-- AI descriptions stored on files; `GET /files?q=` matches them as well as
-- the filename, case-insensitively, through a trigram index like the
-- filename's.

ALTER TABLE files ADD COLUMN description text;

CREATE INDEX files_description_trgm_idx ON files USING gin (lower(description) public.gin_trgm_ops);
