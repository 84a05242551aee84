-- Items, per-reader digest state, the digest log, and the key for link tokens.

CREATE TABLE items (
    id           BIGSERIAL PRIMARY KEY,
    -- 'guid:…' or 'url:…': the same item posted again is recognised by it.
    dedup_key    TEXT UNIQUE,
    title        TEXT NOT NULL,
    url          TEXT,
    summary      TEXT,
    body         TEXT,
    published_at TIMESTAMPTZ,
    source       TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL
);

CREATE TABLE item_topics (
    item_id  BIGINT NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    topic_id BIGINT NOT NULL REFERENCES topics (id),
    PRIMARY KEY (item_id, topic_id)
);
CREATE INDEX item_topics_topic ON item_topics (topic_id, item_id);

-- When the reader's next digest is due, and the newest item (by arrival) that any
-- of their digests has covered.
ALTER TABLE subscribers ADD COLUMN next_slot_at TIMESTAMPTZ;
ALTER TABLE subscribers ADD COLUMN last_item_id BIGINT NOT NULL DEFAULT 0;
CREATE INDEX subscribers_due ON subscribers (next_slot_at) WHERE status = 'confirmed';

-- One row per reader and slot: the guarantee of at most one digest per slot.
CREATE TABLE digests (
    id            BIGSERIAL PRIMARY KEY,
    subscriber_id BIGINT NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    slot_at       TIMESTAMPTZ NOT NULL,
    item_count    INTEGER NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    UNIQUE (subscriber_id, slot_at)
);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
