-- Live changes (`GET …/tasks/events`): on PostgreSQL this version makes every write notify the
-- other instances. SQLite is one process's file: its writes wake that process's streams in
-- memory (see `server/src/events.rs`), and nothing is stored. The version exists so that both
-- databases go through the same schema versions.
SELECT 1;
