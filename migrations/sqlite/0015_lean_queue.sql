-- Mails are looked up by recipient only when they belong to no reader (an erasure
-- finds a reader's mails by reader): every digest queued and every delivery
-- recorded wrote an entry into an index it never needed. (The PostgreSQL version
-- of this migration also compresses digest bodies with lz4; SQLite stores them
-- as they are.)
CREATE INDEX mail_jobs_recipient_unowned ON mail_jobs (recipient) WHERE subscriber_id IS NULL;
DROP INDEX IF EXISTS mail_jobs_recipient;
