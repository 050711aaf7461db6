-- Searches that start from the owner's matches, whatever the planner's statistics say, and
-- cost the same right after a burst of creates.
--
-- The trigram GIN index keyed the owner as `user_id` (btree_gin). Its queries said
-- `user_id = owner`, which every btree index of `tasks` also serves, and when the statistics
-- put many rows on the owner (a 10,000-task user, once analysed) and a pattern's matches
-- higher than they were, the planner walked all of the owner's rows in the listing's order
-- and filtered them: 11.7 ms for a 1 % search, against 1.3 ms from the index. The index is
-- now keyed by `ARRAY[user_id]`, and a search says `ARRAY[user_id] @> ARRAY[owner]`
-- (store/postgres.rs), which no btree index serves: the GIN index is the only way in.
--
-- `gin_pending_list_limit = 64` (kB): GIN's fast update puts new entries in an unsorted
-- pending list, merged into the index when the list outgrows the limit (4 MB by default) or
-- at a vacuum, and every search reads the whole list. After 10,000 creates a search's index
-- scan took 7-9 ms with the list, 0.2 ms without, and the planner, counting its pages, turned
-- away from the index. 64 kB keeps it to a few pages (a scan 0.17-0.26 ms measured) and still
-- merges in batches: pgbench, creates only, c = 10, durable cluster: ~325 us of PostgreSQL
-- CPU per create with 4 MB, 360-405 with 64 kB, 475-495 with fast update off.
CREATE INDEX tasks_owner_search_idx ON tasks
    USING gin ((ARRAY[user_id]), title gin_trgm_ops, description gin_trgm_ops)
    WITH (gin_pending_list_limit = 64);
DROP INDEX tasks_user_search_idx;
