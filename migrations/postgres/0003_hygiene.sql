-- Preference history, the suppression list, and what inbound mail told us.

CREATE TABLE preference_changes (
    id            BIGSERIAL PRIMARY KEY,
    subscriber_id BIGINT NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    changed_at    TIMESTAMPTZ NOT NULL,
    topics        TEXT NOT NULL,
    delivery_time TEXT NOT NULL,
    timezone      TEXT NOT NULL,
    weekdays      BIGINT NOT NULL,
    locale        TEXT NOT NULL
);
CREATE INDEX preference_changes_subscriber ON preference_changes (subscriber_id);

-- Addresses never to be mailed again except through a new double opt-in: only a
-- SHA-256 of the address is kept.
CREATE TABLE suppressions (
    email_hash BYTEA PRIMARY KEY,
    reason     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

-- Bounces, complaints and unsubscribe replies, per reader.
CREATE TABLE mail_events (
    id            BIGSERIAL PRIMARY KEY,
    subscriber_id BIGINT NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    at            TIMESTAMPTZ NOT NULL,
    kind          TEXT NOT NULL,
    detail        TEXT NOT NULL
);
CREATE INDEX mail_events_subscriber ON mail_events (subscriber_id, at);
