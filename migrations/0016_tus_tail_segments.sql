-- A resumable upload's tail (its bytes past the last whole part) becomes a
-- list of segment objects, t/<id>/tail-<n>, so that a PATCH stores only its
-- own bytes instead of reading back and rewriting the whole tail.

-- The segments in order: their numbers and their lengths (tail_len is
-- their sum), and the number the next segment takes. Numbers only grow,
-- so a segment given up is never written again under its key. Segment -1
-- is the single tail object t/<id>/tail of earlier builds.
ALTER TABLE tus_uploads
    ADD COLUMN tail_seqs integer[] NOT NULL DEFAULT '{}',
    ADD COLUMN tail_lens bigint[] NOT NULL DEFAULT '{}',
    ADD COLUMN tail_next integer NOT NULL DEFAULT 0,
    ADD CONSTRAINT tus_uploads_tail_segments_check
        CHECK (cardinality(tail_seqs) = cardinality(tail_lens));

UPDATE tus_uploads SET tail_seqs = '{-1}', tail_lens = ARRAY[tail_len]
WHERE state = 'open' AND tail_len > 0;

-- Every segment object a resumable upload's tail may have in storage (its
-- segments and the next one's key), so that ending the lease removes them
-- all. tail_key stays the tail's name (and the object of earlier builds).
ALTER TABLE upload_leases ADD COLUMN tail_objects text[] NOT NULL DEFAULT '{}';

UPDATE upload_leases SET tail_objects = ARRAY[tail_key || '-0']
WHERE tail_key IS NOT NULL;
