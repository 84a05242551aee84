-- Digest bodies are written once per pass and read back by the workers that send
-- them, and every sign-up queues its whole confirmation mail: compressed with lz4
-- (several times faster than the default pglz, in both directions) where the
-- server was built with it; without it they stay as before. Only values written
-- from now on are affected. (Run through EXECUTE so that a server older than
-- PostgreSQL 14, which has no SET COMPRESSION, gets the notice too.)
DO $$
BEGIN
    EXECUTE 'ALTER TABLE digest_bodies
        ALTER COLUMN text_part SET COMPRESSION lz4,
        ALTER COLUMN html_part SET COMPRESSION lz4';
    EXECUTE 'ALTER TABLE mail_jobs ALTER COLUMN message SET COMPRESSION lz4';
EXCEPTION WHEN feature_not_supported OR syntax_error THEN
    RAISE NOTICE 'this PostgreSQL has no lz4: digest bodies and queued mails stay compressed with pglz';
END $$;

-- Mails are looked up by recipient only when they belong to no reader (an erasure
-- finds a reader's mails by reader): every digest queued and every delivery
-- recorded wrote an entry into an index it never needed.
CREATE INDEX mail_jobs_recipient_unowned ON mail_jobs (recipient) WHERE subscriber_id IS NULL;
DROP INDEX IF EXISTS mail_jobs_recipient;
