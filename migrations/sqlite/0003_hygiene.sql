-- Preference history, the suppression list, and what inbound mail told us.

CREATE TABLE preference_changes (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    subscriber_id INTEGER NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    changed_at    TEXT NOT NULL,
    topics        TEXT NOT NULL,
    delivery_time TEXT NOT NULL,
    timezone      TEXT NOT NULL,
    weekdays      INTEGER NOT NULL,
    locale        TEXT NOT NULL
);
CREATE INDEX preference_changes_subscriber ON preference_changes (subscriber_id);

-- Addresses never to be mailed again except through a new double opt-in: only a
-- SHA-256 of the address is kept.
CREATE TABLE suppressions (
    email_hash BLOB PRIMARY KEY,
    reason     TEXT NOT NULL,
    created_at TEXT NOT NULL
);

-- Bounces, complaints and unsubscribe replies, per reader.
CREATE TABLE mail_events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    subscriber_id INTEGER NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    at            TEXT NOT NULL,
    kind          TEXT NOT NULL,
    detail        TEXT NOT NULL
);
CREATE INDEX mail_events_subscriber ON mail_events (subscriber_id, at);
