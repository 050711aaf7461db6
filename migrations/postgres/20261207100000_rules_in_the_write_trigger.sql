-- The rules on a task's columns and on an owner's counts, checked by the write trigger, and a
-- task's only when the value they guard is new or changes.
--
-- As CHECK constraints, PostgreSQL re-read every one of them from its catalog text and compiled
-- it again on every statement that wrote a row (a prepared statement included: the compiled
-- checks live only as long as one execution), and checked them all whatever the statement
-- changed: a toggle paid for the title's, the description's and the owner's rules, and its
-- counts update in the trigger for the counts' two. That was 20-30 µs of PostgreSQL CPU per
-- write, a fifth of it (docs/benchmarks.md, issue 19 step 10). The trigger's own expressions are
-- compiled once per connection.
--
-- What is refused stays the same, with the same SQLSTATE (23514, check_violation) and the same
-- constraint names, so a bug that breaks a rule still fails its statement. Every write to
-- `tasks` goes through `tasks_log_change`, and only that trigger changes the counts.

ALTER TABLE tasks
    DROP CONSTRAINT tasks_user_id_check,
    DROP CONSTRAINT tasks_title_check,
    DROP CONSTRAINT tasks_description_check,
    DROP CONSTRAINT tasks_priority_check;
ALTER TABLE task_counts
    DROP CONSTRAINT task_counts_total_check,
    DROP CONSTRAINT task_counts_check;

-- Fails the statement as the CHECK constraint `rule` of `relation` did.
CREATE FUNCTION task_rule_broken(rule TEXT, relation TEXT) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'new row for relation "%" violates check constraint "%"', relation, rule
        USING ERRCODE = 'check_violation', CONSTRAINT = rule, TABLE = relation;
END
$$;

CREATE OR REPLACE FUNCTION tasks_log_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    owner_total BIGINT;
    owner_completed BIGINT;
    owner_version BIGINT;
BEGIN
    -- A rule is NULL-tolerant as a CHECK is: `IF NULL` does not fire. (OLD is NULL on INSERT.)
    IF TG_OP = 'INSERT' AND NOT char_length(NEW.user_id) BETWEEN 1 AND 255 THEN
        PERFORM task_rule_broken('tasks_user_id_check', 'tasks');
    END IF;
    IF TG_OP <> 'DELETE' THEN
        IF NEW.title IS DISTINCT FROM OLD.title
            AND NOT (char_length(NEW.title) BETWEEN 1 AND 200 AND btrim(NEW.title) <> '') THEN
            PERFORM task_rule_broken('tasks_title_check', 'tasks');
        END IF;
        IF NEW.description IS DISTINCT FROM OLD.description
            AND NOT char_length(NEW.description) BETWEEN 1 AND 1000 THEN
            PERFORM task_rule_broken('tasks_description_check', 'tasks');
        END IF;
        IF NEW.priority IS DISTINCT FROM OLD.priority AND NOT NEW.priority BETWEEN 0 AND 3 THEN
            PERFORM task_rule_broken('tasks_priority_check', 'tasks');
        END IF;
    END IF;

    IF TG_OP = 'INSERT' THEN
        INSERT INTO task_counts AS counts (user_id, total, completed, version)
        VALUES (NEW.user_id, 1, NEW.completed::int, 1)
        ON CONFLICT (user_id) DO UPDATE
            SET total = counts.total + 1,
                completed = counts.completed + NEW.completed::int,
                version = counts.version + 1
        RETURNING counts.version, counts.total, counts.completed
            INTO NEW.version, owner_total, owner_completed;
    ELSIF TG_OP = 'UPDATE' THEN
        UPDATE task_counts AS counts
            SET completed = counts.completed + NEW.completed::int - OLD.completed::int,
                version = counts.version + 1
            WHERE counts.user_id = NEW.user_id
            RETURNING counts.version, counts.total, counts.completed
                INTO NEW.version, owner_total, owner_completed;
    ELSE
        UPDATE task_counts AS counts
            SET total = counts.total - 1,
                completed = counts.completed - OLD.completed::int,
                version = counts.version + 1
            WHERE counts.user_id = OLD.user_id
            RETURNING counts.version, counts.total, counts.completed
                INTO owner_version, owner_total, owner_completed;
    END IF;
    IF owner_total < 0 THEN
        PERFORM task_rule_broken('task_counts_total_check', 'task_counts');
    END IF;
    IF NOT owner_completed BETWEEN 0 AND owner_total THEN
        PERFORM task_rule_broken('task_counts_check', 'task_counts');
    END IF;

    IF TG_OP = 'DELETE' THEN
        IF owner_version IS NOT NULL THEN
            INSERT INTO task_tombstones (user_id, version, id)
            VALUES (OLD.user_id, owner_version, OLD.id);
        END IF;
        RETURN OLD;
    END IF;
    -- A BEFORE trigger: the identity default has given NEW.id its value already.
    INSERT INTO task_changes (user_id, version, task_id) VALUES (NEW.user_id, NEW.version, NEW.id);
    RETURN NEW;
END
$$;
