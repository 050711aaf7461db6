-- Writes that touch none of `tasks`' indexes: on PostgreSQL the change feed's index moves to
-- its own table so that an UPDATE can be HOT (heap-only). SQLite rewrites only the indexes whose
-- columns change, so nothing changes here; the version exists so that both databases go
-- through the same schema versions.
SELECT 1;
