-- The change feed's index, append-only, on PostgreSQL (a write there no longer moves a row of
-- `task_versions`). SQLite keeps the feed's index in `tasks`, where an UPDATE rewrites only the
-- indexes whose columns change, so nothing changes here; the version exists so that both
-- databases go through the same schema versions.
SELECT 1;
