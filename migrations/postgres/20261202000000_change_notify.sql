-- Live changes (`GET …/tasks/events`): every write to a task also sends
-- `NOTIFY task_changes, '<user_id>'`, from the same trigger that advances the owner's version,
-- so that every instance's open streams learn of it, whoever wrote (this service, an older
-- instance, an operator's SQL).
--
-- Why the notification says only "this owner has changes": PostgreSQL delivers it at commit
-- (never for a rolled-back write), folds repeats within one transaction, and drops every one
-- sent while a listener was disconnected. So a stream never trusts it for content: it reads the
-- change log from its own cursor when woken, and after a listener reconnects every stream reads
-- again (see `server/src/events.rs`). The payload, a user id, is at most 255 characters (the
-- limit is 8000 bytes).
--
-- The same function as in 20261201000100_change_log.sql, with one `pg_notify` per branch: one
-- trigger call per write, as before.
CREATE OR REPLACE FUNCTION tasks_log_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO task_counts AS counts (user_id, total, completed, version)
        VALUES (NEW.user_id, 1, NEW.completed::int, 1)
        ON CONFLICT (user_id) DO UPDATE
            SET total = counts.total + 1,
                completed = counts.completed + NEW.completed::int,
                version = counts.version + 1
        RETURNING version INTO NEW.version;
        PERFORM pg_notify('task_changes', NEW.user_id);
        RETURN NEW;
    ELSIF TG_OP = 'UPDATE' THEN
        UPDATE task_counts
            SET completed = completed + NEW.completed::int - OLD.completed::int,
                version = version + 1
            WHERE user_id = NEW.user_id
            RETURNING version INTO NEW.version;
        PERFORM pg_notify('task_changes', NEW.user_id);
        RETURN NEW;
    ELSE
        WITH counted AS (
            UPDATE task_counts
                SET total = total - 1,
                    completed = completed - OLD.completed::int,
                    version = version + 1
                WHERE user_id = OLD.user_id
                RETURNING version
        )
        INSERT INTO task_tombstones (user_id, version, id)
        SELECT OLD.user_id, version, OLD.id FROM counted;
        PERFORM pg_notify('task_changes', OLD.user_id);
        RETURN OLD;
    END IF;
END
$$;
