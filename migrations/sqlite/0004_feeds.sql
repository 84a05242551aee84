-- Feeds that postbote polls, with their HTTP cache validators and health.

CREATE TABLE feeds (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT NOT NULL UNIQUE,
    url           TEXT NOT NULL,
    topic_id      INTEGER NOT NULL REFERENCES topics (id),
    schedule      TEXT NOT NULL,
    origin        TEXT NOT NULL CHECK (origin IN ('config', 'api')),
    etag          TEXT,
    last_modified TEXT,
    next_poll_at  TEXT NOT NULL,
    last_poll_at  TEXT,
    last_ok_at    TEXT,
    failures      INTEGER NOT NULL DEFAULT 0,
    failures_total INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    created_at    TEXT NOT NULL
);
CREATE INDEX feeds_due ON feeds (next_poll_at);
