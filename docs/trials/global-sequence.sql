-- The change feed numbered by a global sequence: a trial that shows why the service does not do
-- it (docs/contract.md, "Why nothing is skipped"). Never applied anywhere; kept so that anyone
-- can repeat it.
--
-- To repeat it, in a scratch worktree:
--   cp docs/trials/global-sequence.sql migrations/postgres/20261203000000_global_sequence_trial.sql
--   and in server/src/store/postgres.rs, PgWrites::create, replace the `owner` CTE (which takes
--   the owner's row, so that one owner's creates take turns) by a plain read:
--     WITH owner AS (SELECT COALESCE((SELECT total FROM task_counts WHERE user_id = $1), 0) AS total)
--   then: CI=1 cargo test --test replica; CI=1 cargo test --test store late
--
-- Result on 2026-12-03 (main at d565494): `replicas_kept_from_the_feed_equal_the_list_on_postgres`
-- and `…_behind_pgbouncer` failed in round 0 on each of 4 runs (the copies kept tasks that had
-- been deleted: their tombstones took a smaller number than a change already read, and
-- committed after it); SQLite, whose writers take turns on the database, passed. The store test
-- `a_change_that_commits_late_is_never_skipped` failed on PostgreSQL and PgBouncer: the quick
-- write was visible before the slow one committed, and, that assertion taken out, the slow
-- write never appeared in the feed (`[]` where `[slow, quick]` was due).
--
-- What changes: versions come from nextval when the row is written, and the owner's row (the
-- counts, the newest version) is updated only at commit by a deferred trigger, so one owner's
-- writers no longer wait for each other: versions follow the order writers reached nextval,
-- not the order they committed.

CREATE SEQUENCE change_versions;
SELECT setval('change_versions', GREATEST((SELECT max(version) FROM task_counts), 1));

CREATE OR REPLACE FUNCTION tasks_log_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO task_tombstones (user_id, version, id)
        VALUES (OLD.user_id, nextval('change_versions'), OLD.id);
        DELETE FROM task_versions WHERE task_id = OLD.id;
        RETURN OLD;
    END IF;
    NEW.version := nextval('change_versions');
    IF TG_OP = 'INSERT' THEN
        INSERT INTO task_versions (task_id, user_id, version) VALUES (NEW.id, NEW.user_id, NEW.version);
    ELSE
        UPDATE task_versions SET version = NEW.version WHERE task_id = NEW.id;
    END IF;
    RETURN NEW;
END
$$;

CREATE FUNCTION tasks_count_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO task_counts AS counts (user_id, total, completed, version)
        VALUES (NEW.user_id, 1, NEW.completed::int, NEW.version)
        ON CONFLICT (user_id) DO UPDATE
            SET total = counts.total + 1,
                completed = counts.completed + NEW.completed::int,
                version = greatest(counts.version, NEW.version);
    ELSIF TG_OP = 'UPDATE' THEN
        UPDATE task_counts
            SET completed = completed + NEW.completed::int - OLD.completed::int,
                version = greatest(version, NEW.version)
            WHERE user_id = NEW.user_id;
    ELSE
        UPDATE task_counts
            SET total = total - 1,
                completed = completed - OLD.completed::int,
                version = greatest(version, (SELECT max(version) FROM task_tombstones
                                            WHERE user_id = OLD.user_id AND id = OLD.id))
            WHERE user_id = OLD.user_id;
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER tasks_counted_at_commit
    AFTER INSERT OR UPDATE OR DELETE ON tasks
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION tasks_count_at_commit();
