-- Presigned uploads: completion is claimed by one request at a time (the
-- 'completing' state, with a claim that lapses if its instance dies), and
-- the local folder's data route takes one writer at a time.
ALTER TABLE presigned_uploads DROP CONSTRAINT presigned_uploads_state_check;
ALTER TABLE presigned_uploads ADD CONSTRAINT presigned_uploads_state_check
    CHECK (state IN ('pending', 'completing', 'completed', 'aborted', 'failed'));
-- Until when the completing request's claim holds.
ALTER TABLE presigned_uploads ADD COLUMN claimed_until timestamptz;
-- Until when the data route's current writer holds the upload.
ALTER TABLE presigned_uploads ADD COLUMN writer_until timestamptz;
