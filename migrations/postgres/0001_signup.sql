-- Topics, subscribers with their consent proof, link tokens and the mail queue.

CREATE TABLE topics (
    id          BIGSERIAL PRIMARY KEY,
    slug        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    description TEXT,
    created_at  TIMESTAMPTZ NOT NULL,
    retired_at  TIMESTAMPTZ
);

CREATE TABLE subscribers (
    id              BIGSERIAL PRIMARY KEY,
    email           TEXT NOT NULL UNIQUE,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'confirmed', 'unsubscribed', 'bounced')),
    locale          TEXT NOT NULL,
    delivery_time   TEXT NOT NULL,
    timezone        TEXT NOT NULL,
    weekdays        BIGINT NOT NULL DEFAULT 127,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    confirmed_at    TIMESTAMPTZ,
    confirmed_ip    TEXT,
    unsubscribed_at TIMESTAMPTZ
);
CREATE INDEX subscribers_pending ON subscribers (updated_at) WHERE status = 'pending';

CREATE TABLE subscriber_topics (
    subscriber_id BIGINT NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    topic_id      BIGINT NOT NULL REFERENCES topics (id),
    PRIMARY KEY (subscriber_id, topic_id)
);

-- Every sign-up request's proof of consent.
CREATE TABLE consents (
    id              BIGSERIAL PRIMARY KEY,
    subscriber_id   BIGINT NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    given_at        TIMESTAMPTZ NOT NULL,
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
    hash          BYTEA PRIMARY KEY,
    subscriber_id BIGINT REFERENCES subscribers (id) ON DELETE SET NULL,
    purpose       TEXT NOT NULL CHECK (purpose IN ('confirm')),
    created_at    TIMESTAMPTZ NOT NULL,
    expires_at    TIMESTAMPTZ
);
CREATE INDEX tokens_subscriber ON tokens (subscriber_id);

-- The durable mail queue. `message` holds the rendered mail until it is delivered.
CREATE TABLE mail_jobs (
    id              BIGSERIAL PRIMARY KEY,
    subscriber_id   BIGINT REFERENCES subscribers (id) ON DELETE CASCADE,
    kind            TEXT NOT NULL,
    recipient       TEXT NOT NULL,
    envelope_from   TEXT NOT NULL,
    message         BYTEA,
    status          TEXT NOT NULL CHECK (status IN ('queued', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    locked_until    TIMESTAMPTZ,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    finished_at     TIMESTAMPTZ
);
CREATE INDEX mail_jobs_due ON mail_jobs (next_attempt_at) WHERE status = 'queued';
CREATE INDEX mail_jobs_recipient ON mail_jobs (recipient, created_at);
CREATE INDEX mail_jobs_subscriber ON mail_jobs (subscriber_id);
