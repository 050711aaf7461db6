//! The SQLite store: the zero-install default (`sqlite://tasks.db`) and the second backend of
//! the test suite. WAL mode lets readers run beside the single writer; `synchronous=NORMAL` in
//! WAL keeps every committed write across a process crash (not across power loss).
//!
//! Writers take turns through a fair in-process queue before they touch the database. SQLite
//! has one write lock, and its busy handler only sleeps and polls for it: under load a waiter
//! can lose every race for seconds while others win, which showed as 503s once a keyed write
//! held the lock for a whole transaction. A FIFO queue serves writers in arrival order. (The
//! database belongs to this one process; another process's writes would still be waited for
//! by the busy handler.)
//!
//! Every write statement runs to its end (`fetch_all`, never `fetch_optional` or `fetch_one`,
//! even for one row). SQLite commits an autocommit statement whenever it is reset, but runs the
//! write-ahead log's automatic checkpoint only when a step returns `SQLITE_DONE`; sqlx resets a
//! statement after the first row `fetch_optional` wanted. Every keyless create, update and
//! toggle (an `… RETURNING` statement) then committed with no checkpoint: the WAL never
//! restarted and grew by ~60 kB per write (91 MB after 1,500 creates, 680 MB after the bench's
//! 12,000, whose next first read took 0.5 s).

use std::{str::FromStr, sync::Arc, time::Duration};

use anyhow::Context as _;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    FromRow, QueryBuilder, Sqlite, SqliteConnection, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    types::Json,
};

use tokio::sync::{Mutex, OwnedMutexGuard};

use super::{
    Claim, ConnectOptions, Connection, Dialect, Feed, FeedRow, Filter, IdempotencyKey, ListQuery,
    NewTask, PURGE_BATCH, Page, PoolStatus, Precondition, Priority, Purged, Retention, StoreError,
    StoreResult, Task, TaskPatch, TaskStore, Writes, Written, assemble_feed, by_id_statement,
    count_statement, ids_statement, into_page, kept_claim, list_statement, push_like_search,
    task_columns, wait_until_reachable, warm::begin_whole, written,
};

/// Whether a search goes through the FTS5 trigram index: three characters or more (a shorter
/// one has no trigram).
fn uses_search_index(search: &str) -> bool {
    search.chars().count() >= 3
}

/// Whether `filter`'s rows come from the search index's matches.
fn is_searched(filter: &Filter) -> bool {
    filter.search.as_deref().is_some_and(uses_search_index)
}

impl Dialect for Sqlite {
    /// Three characters or more: the FTS5 trigram index (a phrase of trigrams is a substring,
    /// in any letter case); shorter ones have no trigram, and are matched with `LIKE` (which
    /// ignores the case of ASCII letters only) on the user's rows.
    fn push_search(sql: &mut QueryBuilder<Self>, search: &str) {
        if !uses_search_index(search) {
            push_like_search(sql, "LIKE", search);
            return;
        }
        sql.push(" AND id IN search_matches");
    }

    /// A search through the FTS5 index is looked up once per statement, for its count and its
    /// page together: the search's matches (every user's: FTS5 has one index for all) are
    /// materialised, then each is looked up by id. Measured on a 10,000-task user (the
    /// statements alone): a 1 % search's first page 0.48 → 0.35 ms.
    fn push_with(sql: &mut QueryBuilder<Self>, filter: &Filter) {
        let Some(search) = filter.search.as_deref().filter(|search| uses_search_index(search))
        else {
            return;
        };
        // An FTS5 string: in double quotes, each double quote doubled.
        let phrase = format!("\"{}\"", search.replace('"', "\"\""));
        sql.push("WITH search_matches AS MATERIALIZED (SELECT rowid FROM task_search WHERE ");
        sql.push("task_search MATCH ").push_bind(phrase).push(") ");
    }

    /// Without statistics SQLite's planner walks the owner's whole index and probes each row
    /// against a tag's or a search's matches: 10,000 probes for a 10,000-task user, however few
    /// match. Counting, and a page that a search narrows (its matches are usually few), are
    /// cheaper the other way round, which `+user_id` (the same column, no index) makes the
    /// planner take: the matches, each looked up by id (measured on 10,000
    /// tasks: the count of a tag on 17 % of them 5.2 → 2.3 ms, of a 1 % search 5.5 → 2.2 ms;
    /// that search's page 4.1 → 2.8 ms). A tag's page keeps the owner's index in the listing's
    /// order, which stops at the page's end (1.0 ms, against 6.2 ms for looking up and sorting
    /// all of the tag's tasks), probing each row's tag ([`Dialect::push_tag`]).
    fn push_owner(sql: &mut QueryBuilder<Self>, owner: &str, filter: &Filter, counting: bool) {
        let by_matches = is_searched(filter) || (counting && !filter.tags.is_empty());
        sql.push(if by_matches { "+user_id = " } else { "user_id = " });
        Self::bind_text(sql, owner);
    }

    /// Where a tag's tasks are the rows a statement starts from (a count with no search), the
    /// tag's task ids: `id IN (…)`. Anywhere else the rows come from the owner's index in the
    /// listing's order or from a search's matches, and each is checked with one probe of
    /// `task_tags`' key: `IN (…)` there made SQLite collect all of the tag's ids first (1,704
    /// for a tag on 17 % of 10,000 tasks) to check a few dozen rows against them. Measured on
    /// that user (the statements alone): a tag's first page 0.47 → 0.33 ms, search + tag +
    /// priority by due date 0.86 → 0.39 ms.
    fn push_tag(
        sql: &mut QueryBuilder<Self>,
        owner: &str,
        tag: &str,
        filter: &Filter,
        counting: bool,
    ) {
        let leads = counting && !is_searched(filter);
        sql.push(if leads {
            " AND id IN (SELECT task_id FROM task_tags WHERE user_id = "
        } else {
            " AND EXISTS (SELECT 1 FROM task_tags WHERE user_id = "
        });
        Self::bind_text(sql, owner);
        sql.push(" AND tag = ");
        Self::bind_text(sql, tag);
        sql.push(if leads { ")" } else { " AND task_id = tasks.id)" });
    }

    fn bind_text(sql: &mut QueryBuilder<Self>, value: &str) {
        sql.push_bind(value.to_owned());
    }

    fn bind_int(sql: &mut QueryBuilder<Self>, value: i64) {
        sql.push_bind(value);
    }

    fn bind_time(sql: &mut QueryBuilder<Self>, value: DateTime<Utc>) {
        sql.push_bind(value.timestamp_micros());
    }
}

pub struct SqliteStore {
    pool: SqlitePool,
    retention: Retention,
    max_tasks_per_user: i64,
    /// Whose turn it is to write (see the module documentation).
    write_turn: Arc<Mutex<()>>,
}

/// Timestamps are stored as microseconds since the Unix epoch.
#[derive(FromRow)]
struct TaskRow {
    id: i64,
    title: String,
    description: Option<String>,
    completed: bool,
    priority: i16,
    due_at: Option<i64>,
    tags: Json<Vec<String>>,
    created_at: i64,
    updated_at: i64,
}

#[derive(FromRow)]
struct ListedRow {
    #[sqlx(flatten)]
    task: TaskRow,
    total: i64,
}

impl TryFrom<TaskRow> for Task {
    type Error = StoreError;

    fn try_from(row: TaskRow) -> Result<Self, StoreError> {
        Ok(Task {
            id: row.id,
            created_at: timestamp(row.created_at)?,
            updated_at: timestamp(row.updated_at)?,
            title: row.title,
            description: row.description,
            completed: row.completed,
            priority: Priority::try_from(row.priority).map_err(anyhow::Error::msg)?,
            due_at: row.due_at.map(timestamp).transpose()?,
            tags: row.tags.0,
        })
    }
}

fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

fn timestamp(micros: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .ok_or_else(|| anyhow::anyhow!("an out-of-range timestamp: {micros}").into())
}

fn into_task(row: Option<TaskRow>) -> StoreResult<Option<Task>> {
    row.map(Task::try_from).transpose()
}

/// The precondition's timestamps as a JSON array of microseconds, for `json_each` (SQLite has
/// no array parameters).
fn expected_micros(precondition: &Precondition) -> Option<String> {
    precondition.0.as_ref().map(|times| {
        let micros: Vec<i64> = times.iter().map(DateTime::timestamp_micros).collect();
        serde_json::to_string(&micros).expect("integers serialize")
    })
}

impl SqliteStore {
    pub async fn connect(url: &str, options: &ConnectOptions) -> anyhow::Result<Self> {
        let connect_options = SqliteConnectOptions::from_str(url)
            .map_err(|_| anyhow::anyhow!("DATABASE_URL is not a valid SQLite URL"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        wait_until_reachable::<SqliteConnection>(&connect_options, options.startup_deadline)
            .await
            .context("could not open the SQLite database (DATABASE_URL)")?;
        // Every connection to an in-memory database is a database of its own: keep exactly one.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let pool = SqlitePoolOptions::new()
            .max_connections(if in_memory { 1 } else { options.max_connections })
            .min_connections(u32::from(in_memory))
            .idle_timeout(if in_memory { None } else { Some(Duration::from_secs(600)) })
            .max_lifetime(if in_memory { None } else { Some(Duration::from_secs(1800)) })
            .acquire_timeout(options.acquire_timeout)
            .connect_lazy_with(connect_options);

        sqlx::migrate!("../migrations/sqlite")
            .run(&pool)
            .await
            .context("applying SQLite migrations failed")?;
        Ok(Self {
            pool,
            retention: options.retention,
            max_tasks_per_user: options.max_tasks_per_user,
            write_turn: Arc::default(),
        })
    }

    async fn count(&self, owner: &str, filter: &Filter) -> StoreResult<i64> {
        let mut sql = count_statement::<Sqlite>(owner, filter);
        Ok(sql.build_query_scalar().fetch_one(&self.pool).await?)
    }
}

/// The change log after `$2` (tombstones only when `$3`), at most `$4` rows, with the owner's
/// version and purge watermark on every row; one statement, one snapshot.
const FEED: &str = "WITH owner AS ( \
        SELECT COALESCE(max(version), 0) AS current, COALESCE(max(purged_through), 0) AS purged \
        FROM task_counts WHERE user_id = $1 \
    ), changed AS ( \
        SELECT * FROM (SELECT version, id, title, description, completed, priority, due_at, tags, \
                created_at, updated_at \
            FROM tasks WHERE user_id = $1 AND version > $2 ORDER BY version LIMIT $4) \
        UNION ALL \
        SELECT * FROM (SELECT version, id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL \
            FROM task_tombstones WHERE user_id = $1 AND version > $2 AND $3 \
            ORDER BY version LIMIT $4) \
    ) \
    SELECT owner.current, owner.purged, changed.* FROM owner LEFT JOIN changed ON TRUE \
    ORDER BY changed.version LIMIT $4";

#[async_trait]
impl TaskStore for SqliteStore {
    async fn list(&self, owner: &str, query: &ListQuery) -> StoreResult<Page> {
        let mut sql = list_statement::<Sqlite>(owner, query);
        let rows: Vec<ListedRow> = sql.build_query_as().fetch_all(&self.pool).await?;
        let first_total = rows.first().map(|row| row.total);
        let tasks =
            rows.into_iter().map(|row| Task::try_from(row.task)).collect::<StoreResult<_>>()?;
        into_page(
            query,
            tasks,
            first_total,
            || self.count(owner, &query.filter),
            || async {
                let mut sql = ids_statement::<Sqlite>(owner, query);
                Ok(sql.build_query_scalar().fetch_all(&self.pool).await?)
            },
        )
        .await
    }

    async fn tasks_by_id(
        &self,
        owner: &str,
        ids: &[i64],
        filter: &Filter,
    ) -> StoreResult<Vec<Task>> {
        // SQLite has no array parameters: the ids go as a JSON array.
        let ids = serde_json::to_string(ids).map_err(anyhow::Error::from)?;
        let mut sql = by_id_statement::<Sqlite>(owner, filter);
        sql.push(" AND id IN (SELECT value FROM json_each(").push_bind(ids).push("))");
        let rows: Vec<TaskRow> = sql.build_query_as().fetch_all(&self.pool).await?;
        rows.into_iter().map(Task::try_from).collect()
    }

    async fn get(&self, owner: &str, id: i64) -> StoreResult<Option<Task>> {
        let mut db = self.pool.acquire().await?;
        get(&mut db, owner, id).await
    }

    async fn changes(&self, owner: &str, since: Option<i64>, limit: i64) -> StoreResult<Feed> {
        let rows: Vec<FeedRow<i64>> = sqlx::query_as(FEED)
            .bind(owner)
            .bind(since.unwrap_or(0))
            .bind(since.is_some())
            .bind(limit + 1)
            .fetch_all(&self.pool)
            .await?;
        assemble_feed(since, limit, rows, timestamp)
    }

    /// One process, one file: its streams were woken in memory, nobody else is listening.
    async fn announce(&self, _owners: &[String]) -> StoreResult<()> {
        Ok(())
    }

    async fn versions(&self, owners: &[String]) -> StoreResult<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT user_id, version FROM task_counts \
             WHERE user_id IN (SELECT value FROM json_each($1))",
        )
        .bind(Json(owners))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn writes(&self, owner: &str) -> StoreResult<Box<dyn Writes>> {
        let turn = self.write_turn.clone().lock_owned().await;
        let db = Connection::Pooled(self.pool.acquire().await?);
        Ok(Box::new(SqliteWrites {
            db,
            owner: owner.to_owned(),
            max_tasks: self.max_tasks_per_user,
            key: None,
            _turn: turn,
        }))
    }

    async fn claim(&self, owner: &str, key: &IdempotencyKey) -> StoreResult<Claim> {
        // The write turn and the one write lock, taken now: a second request with the key waits
        // for this one to commit and then finds its response (SQLite never needs the 409).
        let turn = self.write_turn.clone().lock_owned().await;
        let pool = self.pool.clone();
        let mut transaction =
            begin_whole(async move { pool.begin_with("BEGIN IMMEDIATE").await }).await?;
        let kept: Option<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT fingerprint, response FROM idempotency_keys \
             WHERE user_id = $1 AND key = $2 AND expires_at > $3",
        )
        .bind(owner)
        .bind(&key.key)
        .bind(now_micros())
        .fetch_optional(&mut *transaction)
        .await?;
        if let Some(claim) = kept_claim(kept, key) {
            transaction.rollback().await?;
            return Ok(claim);
        }
        Ok(Claim::First(Box::new(SqliteWrites {
            db: Connection::Transaction(transaction),
            owner: owner.to_owned(),
            max_tasks: self.max_tasks_per_user,
            key: Some((key.clone(), self.retention.idempotency_keys)),
            _turn: turn,
        })))
    }

    async fn purge(&self) -> StoreResult<Purged> {
        let _turn = self.write_turn.lock().await;
        let pool = self.pool.clone();
        let mut transaction =
            begin_whole(async move { pool.begin_with("BEGIN IMMEDIATE").await }).await?;
        let now = now_micros();
        let purged: Vec<(String, i64)> = sqlx::query_as(
            "DELETE FROM task_tombstones WHERE (user_id, version) IN ( \
                 SELECT user_id, version FROM task_tombstones WHERE deleted_at < $1 \
                 ORDER BY deleted_at LIMIT $2) \
             RETURNING user_id, version",
        )
        .bind(now.saturating_sub(micros(self.retention.tombstones)))
        .bind(PURGE_BATCH)
        .fetch_all(&mut *transaction)
        .await?;
        // Each owner's watermark moves to the newest of their tombstones purged.
        let mut newest: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
        for (owner, version) in &purged {
            let entry = newest.entry(owner).or_default();
            *entry = (*entry).max(*version);
        }
        for (owner, version) in newest {
            sqlx::query(
                "UPDATE task_counts SET purged_through = max(purged_through, $2) \
                 WHERE user_id = $1",
            )
            .bind(owner)
            .bind(version)
            .execute(&mut *transaction)
            .await?;
        }
        let keys = sqlx::query(
            "DELETE FROM idempotency_keys WHERE (user_id, key) IN ( \
                 SELECT user_id, key FROM idempotency_keys WHERE expires_at <= $1 LIMIT $2)",
        )
        .bind(now)
        .bind(PURGE_BATCH)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        // The change log is the index on `tasks`: nothing to compact.
        Ok(Purged {
            tombstones: purged.len() as u64,
            idempotency_keys: keys.rows_affected(),
            compacted_owners: 0,
        })
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn pool_status(&self) -> PoolStatus {
        PoolStatus { size: self.pool.size(), idle: self.pool.num_idle() }
    }
}

/// One owner's writes (see [`Writes`]).
struct SqliteWrites {
    db: Connection<Sqlite>,
    owner: String,
    max_tasks: i64,
    /// The idempotency key this transaction holds, and how long to keep its response.
    key: Option<(IdempotencyKey, Duration)>,
    /// Held until the writes are committed or dropped.
    _turn: OwnedMutexGuard<()>,
}

impl SqliteWrites {
    async fn exists(&mut self, id: i64) -> StoreResult<bool> {
        Ok(get(self.db.get(), &self.owner, id).await?.is_some())
    }
}

#[async_trait]
impl Writes for SqliteWrites {
    async fn create(&mut self, task: &NewTask) -> StoreResult<Task> {
        // One writer at a time: the count read here is the count the insert lands on.
        let row: Option<TaskRow> = sqlx::query_as(concat!(
            "INSERT INTO tasks (user_id, title, description, completed, priority, due_at, tags, \
                 created_at, updated_at) \
             SELECT $1, $2, $3, $4, $7, $8, $9, $5, $5 \
             WHERE COALESCE((SELECT total FROM task_counts WHERE user_id = $1), 0) < $6 \
             RETURNING ",
            task_columns!()
        ))
        .bind(&self.owner)
        .bind(&task.title)
        .bind(&task.description)
        .bind(task.completed)
        .bind(now_micros())
        .bind(self.max_tasks)
        .bind(task.priority.rank())
        .bind(task.due_at.map(|at| at.timestamp_micros()))
        .bind(Json(&task.tags))
        .fetch_all(self.db.get()) // to its end: see the module documentation
        .await?
        .pop();
        row.ok_or(StoreError::TaskLimitReached)?.try_into()
    }

    async fn update(
        &mut self,
        id: i64,
        patch: &TaskPatch,
        precondition: &Precondition,
    ) -> StoreResult<Written<Task>> {
        let row = sqlx::query_as(concat!(
            "UPDATE tasks SET \
                 title = COALESCE($3, title), \
                 description = CASE WHEN $4 THEN $5 ELSE description END, \
                 completed = COALESCE($6, completed), \
                 priority = COALESCE($9, priority), \
                 due_at = CASE WHEN $10 THEN $11 ELSE due_at END, \
                 tags = COALESCE($12, tags), \
                 updated_at = max($7, updated_at + 1) \
             WHERE id = $1 AND user_id = $2 \
               AND ($8 IS NULL OR updated_at IN (SELECT value FROM json_each($8))) \
             RETURNING ",
            task_columns!()
        ))
        .bind(id)
        .bind(&self.owner)
        .bind(&patch.title)
        .bind(patch.description.is_some())
        .bind(patch.description.as_ref().and_then(Option::as_deref))
        .bind(patch.completed)
        .bind(now_micros())
        .bind(expected_micros(precondition))
        .bind(patch.priority.map(Priority::rank))
        .bind(patch.due_at.is_some())
        .bind(patch.due_at.flatten().map(|at| at.timestamp_micros()))
        .bind(patch.tags.as_ref().map(Json))
        .fetch_all(self.db.get()) // to its end: see the module documentation
        .await?
        .pop();
        written(into_task(row)?, precondition, || self.exists(id)).await
    }

    async fn toggle_completed(
        &mut self,
        id: i64,
        precondition: &Precondition,
    ) -> StoreResult<Written<Task>> {
        let row = sqlx::query_as(concat!(
            "UPDATE tasks SET completed = NOT completed, updated_at = max($3, updated_at + 1) \
             WHERE id = $1 AND user_id = $2 \
               AND ($4 IS NULL OR updated_at IN (SELECT value FROM json_each($4))) \
             RETURNING ",
            task_columns!()
        ))
        .bind(id)
        .bind(&self.owner)
        .bind(now_micros())
        .bind(expected_micros(precondition))
        .fetch_all(self.db.get()) // to its end: see the module documentation
        .await?
        .pop();
        written(into_task(row)?, precondition, || self.exists(id)).await
    }

    async fn delete(&mut self, id: i64, precondition: &Precondition) -> StoreResult<Written<()>> {
        let result = sqlx::query(
            "DELETE FROM tasks WHERE id = $1 AND user_id = $2 \
               AND ($3 IS NULL OR updated_at IN (SELECT value FROM json_each($3)))",
        )
        .bind(id)
        .bind(&self.owner)
        .bind(expected_micros(precondition))
        .execute(self.db.get())
        .await?;
        let row = (result.rows_affected() == 1).then_some(());
        written(row, precondition, || self.exists(id)).await
    }

    async fn commit(self: Box<Self>, kept: Option<&[u8]>) -> StoreResult<()> {
        let SqliteWrites { db, owner, key, .. } = *self;
        let Connection::Transaction(mut transaction) = db else { return Ok(()) };
        if let Some((key, ttl)) = key {
            let response = kept.ok_or_else(|| anyhow::anyhow!("a keyed write kept no response"))?;
            let now = now_micros();
            let stored = sqlx::query(
                "INSERT INTO idempotency_keys (user_id, key, fingerprint, response, expires_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (user_id, key) DO UPDATE \
                     SET fingerprint = excluded.fingerprint, response = excluded.response, \
                         expires_at = excluded.expires_at \
                     WHERE idempotency_keys.expires_at <= $6",
            )
            .bind(&owner)
            .bind(&key.key)
            .bind(&key.fingerprint)
            .bind(response)
            .bind(now.saturating_add(micros(ttl)))
            .bind(now)
            .execute(&mut *transaction)
            .await?;
            if stored.rows_affected() == 0 {
                return Err(StoreError::KeyTaken);
            }
        }
        transaction.commit().await?;
        Ok(())
    }
}

async fn get(db: &mut SqliteConnection, owner: &str, id: i64) -> StoreResult<Option<Task>> {
    into_task(
        sqlx::query_as(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE id = $1 AND user_id = $2"
        ))
        .bind(id)
        .bind(owner)
        .fetch_optional(db)
        .await?,
    )
}
