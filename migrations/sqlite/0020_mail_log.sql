-- Mail that is done (sent, or given up) leaves the queue for a log of its own (see
-- the PostgreSQL migration): a delivery deletes its queue row and appends a narrow
-- row here. The purge, the export, the dashboard and the erasure read this table;
-- the queue keeps only queued mail. `id` is the mail's id in the queue.
CREATE TABLE mail_log (
    id            INTEGER NOT NULL,
    subscriber_id INTEGER REFERENCES subscribers (id) ON DELETE CASCADE,
    kind          TEXT NOT NULL,
    recipient     TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('sent', 'failed')),
    attempts      INTEGER NOT NULL,
    last_error    TEXT,
    created_at    TEXT NOT NULL,
    finished_at   TEXT NOT NULL
);
INSERT INTO mail_log (id, subscriber_id, kind, recipient, status, attempts, last_error, created_at, finished_at)
SELECT id, subscriber_id, kind, recipient, status, attempts, last_error, created_at, COALESCE(finished_at, created_at)
FROM mail_jobs WHERE status <> 'queued' ORDER BY finished_at, id;
DELETE FROM mail_jobs WHERE status <> 'queued';
DROP INDEX IF EXISTS mail_jobs_finished;
CREATE INDEX mail_log_finished ON mail_log (finished_at);
CREATE INDEX mail_log_subscriber ON mail_log (subscriber_id);
CREATE INDEX mail_log_recipient_unowned ON mail_log (recipient) WHERE subscriber_id IS NULL;
