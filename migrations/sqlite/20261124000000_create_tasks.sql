-- Tasks, owned by a Better Auth user id (no users table: identities live in Better Auth).
-- Timestamps are microseconds since the Unix epoch (UTC): they sort as numbers and keep the same
-- precision as PostgreSQL's timestamptz. AUTOINCREMENT keeps ids from ever being reused.
CREATE TABLE tasks (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     TEXT    NOT NULL CHECK (length(user_id) BETWEEN 1 AND 255),
    title       TEXT    NOT NULL CHECK (length(title) BETWEEN 1 AND 200 AND length(trim(title)) > 0),
    description TEXT    CHECK (length(description) BETWEEN 1 AND 1000),
    completed   INTEGER NOT NULL DEFAULT 0 CHECK (completed IN (0, 1)),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;

CREATE INDEX tasks_user_created_idx ON tasks (user_id, created_at, id);
