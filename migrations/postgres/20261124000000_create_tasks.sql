-- Tasks, owned by a Better Auth user id. There is no users table: identities live in Better Auth
-- and arrive in tokens, so there is nothing to reference. The CHECKs mirror the API's validation
-- as a last line of defence.
CREATE TABLE tasks (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     TEXT        NOT NULL CHECK (char_length(user_id) BETWEEN 1 AND 255),
    title       TEXT        NOT NULL CHECK (char_length(title) BETWEEN 1 AND 200 AND btrim(title) <> ''),
    description TEXT        CHECK (char_length(description) BETWEEN 1 AND 1000),
    completed   BOOLEAN     NOT NULL DEFAULT FALSE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Serves "this user's tasks, oldest first" (the default listing) and every owner-scoped lookup.
CREATE INDEX tasks_user_created_idx ON tasks (user_id, created_at, id);
