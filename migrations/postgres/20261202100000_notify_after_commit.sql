-- Live changes: the notification leaves the writing transaction. The service now sends
-- `NOTIFY task_changes, '<user_id>'` itself, after its own commits, coalesced per instance
-- (`server/src/events.rs`), and the trigger goes back to its version before
-- 20261202000000_change_notify.sql.
--
-- Why: PostgreSQL serialises the commits of every transaction that notified (a global lock
-- taken before the commit record and held through its WAL flush), so on a durable cluster those
-- writes stop sharing flushes. pgbench, toggles only, c = 50, fsync on: 4,320–4,410 tx/s
-- without the trigger's `pg_notify`, 2,030–2,280 with it (docs/benchmarks.md).
--
-- What is given up: a write made outside the service (an operator's SQL, an instance of the
-- previous version during a rolling deploy) reaches open streams by the safety poll, within
-- 10 s, instead of at once. Nothing is lost either way: streams read the log, not the message.
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
        RETURN NEW;
    ELSIF TG_OP = 'UPDATE' THEN
        UPDATE task_counts
            SET completed = completed + NEW.completed::int - OLD.completed::int,
                version = version + 1
            WHERE user_id = NEW.user_id
            RETURNING version INTO NEW.version;
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
        RETURN OLD;
    END IF;
END
$$;
