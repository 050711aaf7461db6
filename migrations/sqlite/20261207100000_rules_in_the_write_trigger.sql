-- On PostgreSQL, the rules on a task's columns and on an owner's counts move from CHECK
-- constraints into the write trigger (PostgreSQL compiled every CHECK again on every write).
-- SQLite compiles its CHECKs once into each prepared statement, so they stay where they are; the
-- version exists so that both databases go through the same schema versions.
SELECT 1;
