-- Live changes: on PostgreSQL this version moves the notification out of the writing
-- transaction (the service sends it after commit). SQLite notifies nobody: nothing to change.
-- The version exists so that both databases go through the same schema versions.
SELECT 1;
