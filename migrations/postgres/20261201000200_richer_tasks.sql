-- Richer tasks: a priority, a due date and tags on every task, and what searching and filtering
-- one user's tasks needs. Existing tasks get `medium`, no due date and no tags (constant
-- defaults: PostgreSQL 11+ adds such columns without rewriting the table).
--
-- Why these structures (each keeps a query to one user's rows, never a scan of everyone's):
-- * `priority` is a rank, 0 (low) to 3 (urgent), so that `sort=priority` is an index order.
-- * `sort=due_date` puts tasks without one last; the index on `(due_at IS NULL, due_at, id)` is
--   that order, spelled the same way on both databases.
-- * Tags are kept twice: in the task, as the JSON array it returns (order kept), and one row
--   per tag in `task_tags`, written by the trigger below inside the writing statement. "Tasks
--   carrying X" is then one range of one user's rows in a plain B-tree, with the same SQL on
--   SQLite; and it stays exact under concurrent updates, because two updates of one task take
--   its row lock in turn and each trigger replaces what the last one left.
-- * `search` is a substring match (ILIKE '%…%'): pg_trgm's GIN operator class indexes the
--   trigrams of title and description, and btree_gin lets `user_id` sit in the same GIN index,
--   so a search intersects one user's postings with the pattern's trigrams. Both extensions
--   ship with PostgreSQL's contrib (Debian's package, Neon), and are trusted: the database's
--   owner may create them.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE EXTENSION IF NOT EXISTS btree_gin;

ALTER TABLE tasks
    ADD COLUMN priority SMALLINT    NOT NULL DEFAULT 1 CHECK (priority BETWEEN 0 AND 3),
    ADD COLUMN due_at   TIMESTAMPTZ,
    ADD COLUMN tags     JSONB       NOT NULL DEFAULT '[]';

CREATE INDEX tasks_user_priority_idx ON tasks (user_id, priority, id);
CREATE INDEX tasks_user_due_idx ON tasks (user_id, (due_at IS NULL), due_at, id);
CREATE INDEX tasks_user_search_idx ON tasks
    USING gin (user_id, title gin_trgm_ops, description gin_trgm_ops);

CREATE TABLE task_tags (
    user_id TEXT   NOT NULL,
    tag     TEXT   NOT NULL,
    task_id BIGINT NOT NULL,
    PRIMARY KEY (user_id, tag, task_id)
);
CREATE INDEX task_tags_task_idx ON task_tags (task_id);

CREATE FUNCTION tasks_index_tags() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        DELETE FROM task_tags WHERE task_id = OLD.id;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO task_tags (user_id, tag, task_id)
        SELECT NEW.user_id, tag, NEW.id FROM jsonb_array_elements_text(NEW.tags) AS tag
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;

-- Only rows that carry tags, or whose tags change, pay for the trigger.
CREATE TRIGGER tasks_tags_on_insert AFTER INSERT ON tasks
    FOR EACH ROW WHEN (NEW.tags <> '[]') EXECUTE FUNCTION tasks_index_tags();
CREATE TRIGGER tasks_tags_on_update AFTER UPDATE OF tags, user_id ON tasks
    FOR EACH ROW WHEN (NEW.tags IS DISTINCT FROM OLD.tags OR NEW.user_id <> OLD.user_id)
    EXECUTE FUNCTION tasks_index_tags();
CREATE TRIGGER tasks_tags_on_delete AFTER DELETE ON tasks
    FOR EACH ROW WHEN (OLD.tags <> '[]') EXECUTE FUNCTION tasks_index_tags();
