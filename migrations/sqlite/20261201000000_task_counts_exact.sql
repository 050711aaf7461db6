-- PostgreSQL's twin recounts every owner under a lock, because its earlier backfill could miss
-- a task written during a rolling deploy. SQLite's could not (the migration held the database's
-- one write lock from its first statement), but a recount is cheap and keeps both databases on
-- the same schema versions.
UPDATE task_counts SET total = 0, completed = 0
WHERE (total, completed) <> (0, 0)
  AND NOT EXISTS (SELECT 1 FROM tasks WHERE tasks.user_id = task_counts.user_id);

INSERT INTO task_counts (user_id, total, completed)
SELECT user_id, count(*), sum(completed) FROM tasks WHERE true GROUP BY user_id
ON CONFLICT (user_id) DO UPDATE SET total = excluded.total, completed = excluded.completed
WHERE (task_counts.total, task_counts.completed) <> (excluded.total, excluded.completed);
