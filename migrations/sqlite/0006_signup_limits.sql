-- The sign-up form's abuse limits.

-- One row per sign-up mail (confirmation or "already subscribed" notice) the public
-- form caused, or would have caused for a suppressed address: the per-mailbox,
-- per-domain and global hourly limits count these rows. Only SHA-256 hashes of the
-- mailbox key (`EmailAddress::mailbox_key`) and of its ASCII domain are kept, and
-- rows are deleted once they are older than the confirmation lifetime.
CREATE TABLE signup_mails (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    mailbox    BLOB NOT NULL,
    domain     BLOB NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX signup_mails_mailbox ON signup_mails (mailbox, created_at);
CREATE INDEX signup_mails_domain ON signup_mails (domain, created_at);
CREATE INDEX signup_mails_created ON signup_mails (created_at);

