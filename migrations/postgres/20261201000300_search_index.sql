-- Nothing to do on PostgreSQL: its search index (pg_trgm's GIN, with `user_id` in it) came with
-- 20261201000200_richer_tasks. This file keeps both databases on the same versions; SQLite's
-- twin adds its FTS5 trigram index.
SELECT 1;
