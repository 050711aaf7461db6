-- The migration that created task_counts backfilled it from a snapshot taken before its
-- triggers existed: a task written in between by an instance still running the old code (a
-- rolling deploy) was counted by neither, and its owner's count stayed wrong for good. This
-- recounts every owner while holding a lock that keeps every writer out (SHARE ROW EXCLUSIVE
-- conflicts with INSERT, UPDATE and DELETE, and lets reads through) until the migration
-- commits; from then on the triggers count each write in its own transaction.
LOCK TABLE tasks IN SHARE ROW EXCLUSIVE MODE;

UPDATE task_counts SET total = 0, completed = 0
WHERE (total, completed) <> (0, 0)
  AND NOT EXISTS (SELECT 1 FROM tasks WHERE tasks.user_id = task_counts.user_id);

INSERT INTO task_counts (user_id, total, completed)
SELECT user_id, count(*), count(*) FILTER (WHERE completed) FROM tasks GROUP BY user_id
ON CONFLICT (user_id) DO UPDATE SET total = EXCLUDED.total, completed = EXCLUDED.completed
WHERE (task_counts.total, task_counts.completed) <> (EXCLUDED.total, EXCLUDED.completed);
