-- Short, renewed leases on claimed mail; counters that cost O(1) to read; a compact
-- per-reader delivery history that outlives the purged mail rows.

-- Who holds a claimed mail's lease: a random token per claimed batch. A worker
-- renews (`locked_until`) only rows that still carry its token, so it notices
-- when it has lost them to another worker.
ALTER TABLE mail_jobs ADD COLUMN lease_owner INTEGER;

-- Finished mail, oldest first, for the retention purge.
CREATE INDEX mail_jobs_finished ON mail_jobs (finished_at) WHERE status <> 'queued';

-- Counters for /api/v1/stats and /metrics (see src/store/counters.rs): each counter
-- is the sum of its shards, written in the transactions that change what it counts.
CREATE TABLE counters (
    name  TEXT NOT NULL,
    shard INTEGER NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (name, shard)
);
INSERT INTO counters (name, shard, value)
    SELECT 'subscribers:' || status, 0, COUNT(*) FROM subscribers GROUP BY status;
INSERT INTO counters (name, shard, value)
    SELECT 'mails:' || kind || ':enqueued', 0, COUNT(*) FROM mail_jobs GROUP BY kind;
INSERT INTO counters (name, shard, value)
    SELECT 'mails:' || kind || ':' || status, 0, COUNT(*) FROM mail_jobs
    WHERE status <> 'queued' GROUP BY kind, status;
INSERT INTO counters (name, shard, value)
    SELECT 'mails_retried', 0, COUNT(*) FROM mail_jobs WHERE attempts > 1;
INSERT INTO counters (name, shard, value)
    SELECT 'mail_events:' || kind, 0, COUNT(*) FROM mail_events GROUP BY kind;

-- Finished mail older than delivery.keep_days, per reader, day (UTC, of
-- finished_at) and kind: what the export shows once the rows are purged.
CREATE TABLE delivery_days (
    subscriber_id INTEGER NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    day           TEXT NOT NULL,
    kind          TEXT NOT NULL,
    sent          INTEGER NOT NULL DEFAULT 0,
    failed        INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    PRIMARY KEY (subscriber_id, day, kind)
);
