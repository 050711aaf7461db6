-- PostgreSQL's trigram index keyed by `ARRAY[user_id]`, with a small pending list. SQLite's
-- FTS5 index stays as it is; the version exists so that both databases go through the same
-- schema versions.
SELECT 1;
