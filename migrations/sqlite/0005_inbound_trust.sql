-- Inbound mail that must not be trusted on its word.

-- Mailed-in press releases that could not be authenticated wait here for an
-- operator ('held'); approving one stores it as an item (a new arrival, so no
-- reader's watermark has passed it). Messages with several or no From headers are
-- kept as 'refused' so that an operator can see what was turned away.
CREATE TABLE submissions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    status      TEXT NOT NULL CHECK (status IN ('held', 'approved', 'rejected', 'refused')),
    topic       TEXT NOT NULL,
    sender      TEXT NOT NULL,
    title       TEXT NOT NULL,
    summary     TEXT,
    body        TEXT,
    guid        TEXT,
    reason      TEXT NOT NULL,
    item_id     INTEGER REFERENCES items (id) ON DELETE SET NULL,
    received_at TEXT NOT NULL,
    decided_at  TEXT
);
CREATE INDEX submissions_status ON submissions (status, id);
CREATE UNIQUE INDEX submissions_guid ON submissions (guid);

-- The Message-ID of our mail that a report is about: several delay warnings for one
-- message count as one soft bounce.
ALTER TABLE mail_events ADD COLUMN message_ref TEXT;
