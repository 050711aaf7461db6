-- A small pending list for PostgreSQL's trigram GIN index. SQLite's FTS5 index has no pending
-- list to bound; the version exists so that both databases go through the same schema
-- versions.
SELECT 1;
