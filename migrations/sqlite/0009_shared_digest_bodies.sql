-- A digest's content is the same for every reader with the same language, topics,
-- news and local date: it is stored once, and each reader's mail job refers to it.
-- The reader's own part (address, links, List-Unsubscribe) is rendered when the mail
-- is sent. `body_key` names the content (a hash of what it was rendered from), so
-- passes and instances that need the same content share one row.
CREATE TABLE digest_bodies (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    body_key    TEXT NOT NULL UNIQUE,
    locale      TEXT NOT NULL,
    subject     TEXT NOT NULL,
    text_part   TEXT NOT NULL,
    html_part   TEXT NOT NULL,
    topics      TEXT NOT NULL,
    item_count  INTEGER NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE INDEX digest_bodies_created ON digest_bodies (created_at);
-- A digest job has a body and no message of its own; a confirmation mail, and every
-- digest queued before this version, keeps its whole message and no body.
ALTER TABLE mail_jobs ADD COLUMN body_id INTEGER REFERENCES digest_bodies (id);
CREATE INDEX mail_jobs_body ON mail_jobs (body_id) WHERE body_id IS NOT NULL;
