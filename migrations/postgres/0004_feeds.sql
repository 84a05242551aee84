-- Feeds that postbote polls, with their HTTP cache validators and health.

CREATE TABLE feeds (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    url           TEXT NOT NULL,
    topic_id      BIGINT NOT NULL REFERENCES topics (id),
    schedule      TEXT NOT NULL,
    origin        TEXT NOT NULL CHECK (origin IN ('config', 'api')),
    etag          TEXT,
    last_modified TEXT,
    next_poll_at  TIMESTAMPTZ NOT NULL,
    last_poll_at  TIMESTAMPTZ,
    last_ok_at    TIMESTAMPTZ,
    failures      INTEGER NOT NULL DEFAULT 0,
    failures_total BIGINT NOT NULL DEFAULT 0,
    last_error    TEXT,
    created_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX feeds_due ON feeds (next_poll_at);
