-- Sessions of the operator's console (/admin): the cookie carries a random token,
-- this table only its SHA-256, so a copy of the database opens no session. A
-- session ends at `expires_at` (fixed, from the login) or at logout. `csrf` is the
-- token every console form carries, tied to this session.

CREATE TABLE admin_sessions (
    token_hash BLOB PRIMARY KEY,
    csrf       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX admin_sessions_expiry ON admin_sessions (expires_at);
