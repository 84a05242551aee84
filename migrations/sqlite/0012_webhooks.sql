-- Signed webhooks (Standard Webhooks). `webhook_endpoints` holds the URLs of
-- `[webhooks] urls`, synced at each start of `serve`: a URL no longer configured
-- stays (its delivery history names it) with `active = 0`. A state change that
-- concerns integrations (a reader confirmed, unsubscribed, bounced, complained,
-- erased) writes one `webhook_deliveries` row per active endpoint in its own
-- transaction, so no event is lost and none is sent for a change that rolled back.
-- With no active endpoint nothing is written.
--
-- A delivery is claimed with a lease (`locked_until`, `lease_owner`), like mail;
-- `message_id` is the `webhook-id` every attempt carries (the same for every
-- endpoint of one event). `payload` (the JSON body, which may hold the address) is
-- set to NULL once the delivery is done or given up; only the history stays.

CREATE TABLE webhook_endpoints (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    url    TEXT NOT NULL UNIQUE,
    active INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE webhook_deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id     INTEGER NOT NULL REFERENCES webhook_endpoints (id),
    message_id      TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    -- No foreign key: an erased reader's events outlive the row.
    subscriber_id   INTEGER,
    payload         TEXT,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    locked_until    TEXT,
    lease_owner     INTEGER,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    finished_at     TEXT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at, id) WHERE status = 'queued';
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (finished_at) WHERE status <> 'queued';
