-- Topics, subscribers with their consent proof, link tokens and the mail queue.

CREATE TABLE topics (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    slug        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    description TEXT,
    created_at  TEXT NOT NULL,
    retired_at  TEXT
);

CREATE TABLE subscribers (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    email           TEXT NOT NULL UNIQUE,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'confirmed', 'unsubscribed', 'bounced')),
    locale          TEXT NOT NULL,
    delivery_time   TEXT NOT NULL,
    timezone        TEXT NOT NULL,
    weekdays        INTEGER NOT NULL DEFAULT 127,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    confirmed_at    TEXT,
    confirmed_ip    TEXT,
    unsubscribed_at TEXT
);
CREATE INDEX subscribers_pending ON subscribers (updated_at) WHERE status = 'pending';

CREATE TABLE subscriber_topics (
    subscriber_id INTEGER NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    topic_id      INTEGER NOT NULL REFERENCES topics (id),
    PRIMARY KEY (subscriber_id, topic_id)
);

-- Every sign-up request's proof of consent.
CREATE TABLE consents (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    subscriber_id   INTEGER NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    given_at        TEXT NOT NULL,
    ip              TEXT,
    user_agent      TEXT,
    consent_version TEXT NOT NULL,
    consent_text    TEXT NOT NULL,
    topics          TEXT NOT NULL,
    delivery_time   TEXT NOT NULL,
    timezone        TEXT NOT NULL,
    locale          TEXT NOT NULL
);
CREATE INDEX consents_subscriber ON consents (subscriber_id);

-- Link tokens, stored only as SHA-256 hashes. When a never-confirmed sign-up is
-- purged, its tokens stay behind without a subscriber for a while, so their links
-- answer "expired" (410) rather than "unknown" (404).
CREATE TABLE tokens (
    hash          BLOB PRIMARY KEY,
    subscriber_id INTEGER REFERENCES subscribers (id) ON DELETE SET NULL,
    purpose       TEXT NOT NULL CHECK (purpose IN ('confirm')),
    created_at    TEXT NOT NULL,
    expires_at    TEXT
);
CREATE INDEX tokens_subscriber ON tokens (subscriber_id);

-- The durable mail queue. `message` holds the rendered mail until it is delivered.
CREATE TABLE mail_jobs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    subscriber_id   INTEGER REFERENCES subscribers (id) ON DELETE CASCADE,
    kind            TEXT NOT NULL,
    recipient       TEXT NOT NULL,
    envelope_from   TEXT NOT NULL,
    message         BLOB,
    status          TEXT NOT NULL CHECK (status IN ('queued', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    locked_until    TEXT,
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    finished_at     TEXT
);
CREATE INDEX mail_jobs_due ON mail_jobs (next_attempt_at) WHERE status = 'queued';
CREATE INDEX mail_jobs_recipient ON mail_jobs (recipient, created_at);
CREATE INDEX mail_jobs_subscriber ON mail_jobs (subscriber_id);
