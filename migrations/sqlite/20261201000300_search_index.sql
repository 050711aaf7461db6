-- Search by index: an FTS5 table with the trigram tokenizer over every task's title and
-- description, kept by the triggers below in the writing statement. A phrase of trigrams is a
-- substring match, in any letter case, so `search` (3 characters or more) is an index lookup
-- instead of a `LIKE` over each of the user's rows (measured ~20x a small user's page at
-- 10,000 tasks: docs/benchmarks.md). The index holds every user's text; the lookup's cost
-- follows the term's matches, which the query then keeps to the user's own rows.
-- External content: the text stays only in `tasks`.
CREATE VIRTUAL TABLE task_search USING fts5(
    title, description, content = 'tasks', content_rowid = 'id', tokenize = 'trigram'
);
INSERT INTO task_search (task_search) VALUES ('rebuild');

CREATE TRIGGER tasks_search_on_insert AFTER INSERT ON tasks
BEGIN
    INSERT INTO task_search (rowid, title, description)
    VALUES (NEW.id, NEW.title, NEW.description);
END;

CREATE TRIGGER tasks_search_on_update AFTER UPDATE OF title, description ON tasks
    WHEN NEW.title IS NOT OLD.title OR NEW.description IS NOT OLD.description
BEGIN
    INSERT INTO task_search (task_search, rowid, title, description)
    VALUES ('delete', OLD.id, OLD.title, OLD.description);
    INSERT INTO task_search (rowid, title, description)
    VALUES (NEW.id, NEW.title, NEW.description);
END;

CREATE TRIGGER tasks_search_on_delete AFTER DELETE ON tasks
BEGIN
    INSERT INTO task_search (task_search, rowid, title, description)
    VALUES ('delete', OLD.id, OLD.title, OLD.description);
END;
