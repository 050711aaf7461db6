//! The PostgreSQL store (production, Neon). TLS and `sslmode` come from the URL via rustls.
//!
//! Prepared statements: sqlx caches one named prepared statement per SQL text per connection.
//! Neon's pooler (PgBouncer in transaction mode with `max_prepared_statements`) supports
//! protocol-level prepared statements, so the cache stays on. `DATABASE_STATEMENT_CACHE=0` is
//! for a pooler that does not (PgBouncer before 1.21, several hosted poolers): then only
//! unnamed statements are sent, and each store call runs in one transaction, because sqlx
//! parses an unnamed statement and executes it in two round trips, which a transaction-mode
//! pooler may otherwise send to two different server connections. Nothing outlives the
//! transaction. Migrations always work that way (see [`migrate`]).

use std::{str::FromStr, sync::Arc, time::Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{TryStreamExt as _, stream::BoxStream};
use sqlx::{
    Decode, FromRow, PgConnection, PgPool, Postgres, QueryBuilder, Row as _, Type,
    postgres::{PgConnectOptions, PgListener, PgPoolOptions, PgRow},
    types::Json,
};
use tokio::sync::mpsc;

use super::{
    COMPACT_BATCH, Claim, ConnectOptions, Connection, Dialect, Feed, FeedRow, Filter, Heard,
    IdempotencyKey, ListQuery, NewTask, PURGE_BATCH, Page, PoolStatus, Precondition, Priority,
    Purged, Retention, StoreError, StoreResult, TASK_COLUMN_NAMES, Task, TaskPatch, TaskStore,
    Writes, Written, assemble_feed, by_id_statement, count_statement, ids_statement, into_page,
    kept_claim, list_statement, push_like_search, task_columns, wait_until_reachable,
    warm::WarmPool, written,
};

impl Dialect for Postgres {
    /// One probe of `task_tags`' primary key per task of the owner. `OFFSET 0` keeps the
    /// planner from making it a join: when it underestimates a user's rows (a user outside the
    /// statistics' common values, or one who just imported thousands) it chose a nested loop
    /// that rescans all of the tag's rows for every task: 6 s for 10,000 tasks with stale
    /// statistics, against 28 ms this way (9 ms against 3 ms once analysed).
    fn push_tag(sql: &mut QueryBuilder<Self>, owner: &str, tag: &str, _: &Filter, _: bool) {
        sql.push(" AND EXISTS (SELECT FROM task_tags WHERE user_id = ");
        Self::bind_text(sql, owner);
        sql.push(" AND tag = ");
        Self::bind_text(sql, tag);
        sql.push(" AND task_id = tasks.id OFFSET 0)");
    }
    /// Served by the trigram GIN index, the owner in it (see [`Dialect::push_owner`]).
    fn push_search(sql: &mut QueryBuilder<Self>, search: &str) {
        push_like_search(sql, "ILIKE", search);
    }
    /// A search with a trigram starts from the GIN index over `(ARRAY[user_id], title,
    /// description)`: the owner's entry and the pattern's trigrams, intersected. Written as
    /// `ARRAY[user_id] @> ARRAY[owner]`, the owner condition is one that no btree index serves,
    /// so the planner cannot walk all of the owner's rows in the listing's order and filter
    /// them instead, which it chose whenever its statistics put many rows on the owner and the
    /// pattern's matches higher than they were: a 1 % search of a 10,000-task owner took
    /// 11.7 ms that way and 1.3 ms from its matches (a 23 % one 4.8 against 6.2 ms; see
    /// `docs/benchmarks.md`). Without a trigram (fewer than three letters or digits in a row)
    /// the index has nothing to look up, and the owner's rows are walked.
    fn push_owner(sql: &mut QueryBuilder<Self>, owner: &str, filter: &Filter, _counting: bool) {
        if filter.search.as_deref().is_some_and(has_trigram) {
            sql.push("ARRAY[user_id] @> ARRAY[");
            Self::bind_text(sql, owner);
            sql.push("]");
        } else {
            sql.push("user_id = ");
            Self::bind_text(sql, owner);
        }
    }

    fn bind_text(sql: &mut QueryBuilder<Self>, value: &str) {
        sql.push_bind(value.to_owned());
    }

    fn bind_int(sql: &mut QueryBuilder<Self>, value: i64) {
        sql.push_bind(value);
    }

    fn bind_time(sql: &mut QueryBuilder<Self>, value: DateTime<Utc>) {
        sql.push_bind(value);
    }
}

/// Whether pg_trgm finds a trigram in `search`: a run of three letters or digits (it splits
/// text into words at every other character, and a `LIKE` pattern's words are not padded).
fn has_trigram(search: &str) -> bool {
    search.split(|c: char| !c.is_alphanumeric()).any(|word| word.chars().nth(2).is_some())
}

pub struct PostgresStore {
    pool: Arc<WarmPool<Postgres>>,
    /// Named prepared statements may be used (`DATABASE_STATEMENT_CACHE` is not 0).
    prepared: bool,
    retention: Retention,
    max_tasks_per_user: i64,
}

/// Whether a row's column types are checked against the Rust types they decode into.
#[derive(Clone, Copy, PartialEq)]
enum Check {
    Types,
    /// The row's result had its first row checked: every row of one result has the same columns.
    Skip,
}

/// Every row of one result, decoded as it comes, the first with its column types checked and
/// the others without: a schema that drifted still fails the statement, and a page of 20 tasks
/// makes 10 checks instead of 200, each a comparison of sqlx's type descriptions (~9 % of the
/// server's instructions in the mix, `docs/benchmarks.md`, issue 19 step 15).
async fn decode_rows<T>(
    mut rows: BoxStream<'_, Result<PgRow, sqlx::Error>>,
    decode: impl Fn(&PgRow, Check) -> Result<T, sqlx::Error>,
) -> Result<Vec<T>, sqlx::Error> {
    let mut decoded = Vec::new();
    while let Some(row) = rows.try_next().await? {
        let check = if decoded.is_empty() { Check::Types } else { Check::Skip };
        decoded.push(decode(&row, check)?);
    }
    Ok(decoded)
}

/// A task from the first columns of a row, by position in the order of `task_columns!()`. The
/// derived `FromRow` looked every column of every row up by name in sqlx's column map (a page of
/// 20 tasks, 200 look-ups; ~2 % of the server's CPU in the mix, `docs/benchmarks.md`). Each
/// column's name is checked in debug builds (every test that reads a task).
impl<'r> FromRow<'r, PgRow> for Task {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        Task::decode(row, Check::Types)
    }
}

impl Task {
    fn decode(row: &PgRow, check: Check) -> Result<Self, sqlx::Error> {
        let priority: i16 = column(row, 4, check)?;
        Ok(Task {
            id: column(row, 0, check)?,
            title: column(row, 1, check)?,
            description: column(row, 2, check)?,
            completed: column(row, 3, check)?,
            priority: Priority::try_from(priority).map_err(|err| sqlx::Error::ColumnDecode {
                index: "priority".into(),
                source: err.into(),
            })?,
            due_at: column(row, 5, check)?,
            tags: column::<Json<Vec<String>>>(row, 6, check)?.0,
            created_at: column(row, 7, check)?,
            updated_at: column(row, 8, check)?,
        })
    }
}

/// Column `index` of a task's row.
fn column<'r, T: Decode<'r, Postgres> + Type<Postgres>>(
    row: &'r PgRow,
    index: usize,
    check: Check,
) -> Result<T, sqlx::Error> {
    debug_assert_eq!(
        sqlx::Column::name(&row.columns()[index]),
        TASK_COLUMN_NAMES[index],
        "a statement's columns are not `task_columns!()`"
    );
    value(row, index, check)
}

fn value<'r, T: Decode<'r, Postgres> + Type<Postgres>>(
    row: &'r PgRow,
    index: usize,
    check: Check,
) -> Result<T, sqlx::Error> {
    match check {
        Check::Types => row.try_get(index),
        Check::Skip => row.try_get_unchecked(index),
    }
}

/// A task of a listing, and the listing's total (the column after the task's).
struct ListedRow {
    task: Task,
    total: i64,
}

impl ListedRow {
    fn decode(row: &PgRow, check: Check) -> Result<Self, sqlx::Error> {
        Ok(ListedRow {
            task: Task::decode(row, check)?,
            total: value(row, TASK_COLUMN_NAMES.len(), check)?,
        })
    }
}

impl PostgresStore {
    pub async fn connect(url: &str, options: &ConnectOptions) -> anyhow::Result<Self> {
        // The parse error would echo the URL, password included: say only what is wrong.
        let connect_options = PgConnectOptions::from_str(url)
            .map_err(|_| anyhow::anyhow!("DATABASE_URL is not a valid PostgreSQL URL"))?
            .statement_cache_capacity(options.statement_cache_capacity)
            .application_name("task-api");
        wait_until_reachable::<PgConnection>(&connect_options, options.startup_deadline)
            .await
            .context("could not connect to PostgreSQL (DATABASE_URL)")?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            // A ping before every checkout would double each request's round trips; a broken
            // connection instead fails its request with a 503 and is dropped by the pool.
            .test_before_acquire(false)
            // Neon's pooler and compute close idle connections; do not keep them around longer.
            .idle_timeout(std::time::Duration::from_secs(60))
            .connect_lazy_with(connect_options);

        migrate(&pool).await.context("applying PostgreSQL migrations failed")?;
        Ok(Self {
            pool: WarmPool::new(pool, options.max_connections, options.acquire_timeout),
            prepared: options.statement_cache_capacity > 0,
            retention: options.retention,
            max_tasks_per_user: options.max_tasks_per_user,
        })
    }

    /// Runs one store call's statements on one connection; without prepared statements inside
    /// a transaction (see the module documentation).
    async fn call<T>(
        &self,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> StoreResult<T> {
        if self.prepared {
            let mut connection = self.pool.acquire().await?;
            let output = work(&mut connection).await?;
            connection.finish();
            Ok(output)
        } else {
            let mut transaction = self.pool.begin().await?;
            let output = work(&mut transaction).await?;
            transaction.commit().await?;
            Ok(output)
        }
    }
}

/// The embedded migrations, applied in one transaction under a transaction-scoped advisory
/// lock, with only unnamed statements. sqlx's own runner takes a session-level lock and uses
/// named prepared statements, neither of which holds behind a transaction-mode pooler; this
/// holds there and on a direct connection alike, with several instances starting at once (the
/// others wait for the lock, then find nothing to do). The bookkeeping is sqlx's own
/// `_sqlx_migrations` table, so `sqlx migrate` and this runner understand each other.
async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    let migrator = sqlx::migrate!("../migrations/postgres");
    let mut transaction = pool.begin().await?;
    sqlx::raw_sql("SELECT pg_advisory_xact_lock(hashtext('task-api migrations'))")
        .execute(&mut *transaction)
        .await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
             version BIGINT PRIMARY KEY,
             description TEXT NOT NULL,
             installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
             success BOOLEAN NOT NULL,
             checksum BYTEA NOT NULL,
             execution_time BIGINT NOT NULL
         )",
    )
    .execute(&mut *transaction)
    .await?;
    let applied: Vec<(i64, Vec<u8>, bool)> =
        sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations")
            .persistent(false)
            .fetch_all(&mut *transaction)
            .await?;
    for migration in migrator.iter().filter(|m| !m.migration_type.is_down_migration()) {
        match applied.iter().find(|(version, ..)| *version == migration.version) {
            Some((version, _, false)) => {
                anyhow::bail!("migration {version} failed earlier: fix it by hand")
            }
            Some((version, checksum, true)) if **checksum != *migration.checksum => {
                anyhow::bail!("migration {version} was changed after it was applied")
            }
            Some(_) => continue,
            None => {}
        }
        anyhow::ensure!(
            !migration.no_tx,
            "migration {} must run in a transaction",
            migration.version
        );
        let started = Instant::now();
        sqlx::raw_sql(migration.sql.clone()).execute(&mut *transaction).await?;
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES ($1, $2, TRUE, $3, $4)",
        )
        .bind(migration.version)
        .bind(&*migration.description)
        .bind(&*migration.checksum)
        .bind(started.elapsed().as_nanos() as i64)
        .persistent(false)
        .execute(&mut *transaction)
        .await?;
        tracing::info!(version = migration.version, description = %migration.description, "applied a migration");
    }
    transaction.commit().await?;
    Ok(())
}

/// The change log after `$2` (tombstones only when `$3`), at most `$4` rows, with the owner's
/// version and purge watermark on every row: one statement, so one snapshot, in which every
/// version up to the owner's current one is visible (see the migration). Live tasks are found
/// through `task_changes`, the feed's index kept out of `tasks`, append-only: an entry counts
/// while its task still has its version (`20261207000000_append_only_change_log.sql`).
const FEED: &str = "WITH owner AS ( \
        SELECT COALESCE(max(version), 0) AS current, COALESCE(max(purged_through), 0) AS purged \
        FROM task_counts WHERE user_id = $1 \
    ), changed AS ( \
        (SELECT logged.version, id, title, description, completed, priority, due_at, tags, \
             created_at, updated_at \
         FROM task_changes AS logged \
         JOIN tasks ON tasks.id = logged.task_id AND tasks.version = logged.version \
         WHERE logged.user_id = $1 AND logged.version > $2 ORDER BY logged.version LIMIT $4) \
        UNION ALL \
        (SELECT version, id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL \
         FROM task_tombstones WHERE user_id = $1 AND version > $2 AND $3 ORDER BY version LIMIT $4) \
    ) \
    SELECT owner.current, owner.purged, changed.* FROM owner LEFT JOIN changed ON TRUE \
    ORDER BY changed.version LIMIT $4";

#[async_trait]
impl TaskStore for PostgresStore {
    async fn list(&self, owner: &str, query: &ListQuery) -> StoreResult<Page> {
        let mut sql = list_statement::<Postgres>(owner, query);
        let rows = self
            .call(async |db| {
                decode_rows(sql.build().persistent(self.prepared).fetch(db), ListedRow::decode)
                    .await
            })
            .await?;
        let first_total = rows.first().map(|row| row.total);
        let tasks: Vec<Task> = rows.into_iter().map(|row| row.task).collect();
        into_page(
            query,
            tasks,
            first_total,
            || self.count(owner, &query.filter),
            || {
                let mut sql = ids_statement::<Postgres>(owner, query);
                self.call(async move |db| {
                    sql.build_query_scalar().persistent(self.prepared).fetch_all(db).await
                })
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
        let mut sql = by_id_statement::<Postgres>(owner, filter);
        sql.push(" AND id = ANY(").push_bind(ids).push(")");
        self.call(async |db| {
            decode_rows(sql.build().persistent(self.prepared).fetch(db), Task::decode).await
        })
        .await
    }

    async fn get(&self, owner: &str, id: i64) -> StoreResult<Option<Task>> {
        let prepared = self.prepared;
        self.call(async |db| get(db, prepared, owner, id).await).await
    }

    async fn changes(&self, owner: &str, since: Option<i64>, limit: i64) -> StoreResult<Feed> {
        let rows: Vec<FeedRow<DateTime<Utc>>> = self
            .call(async |db| {
                sqlx::query_as(FEED)
                    .bind(owner)
                    .bind(since.unwrap_or(0))
                    .bind(since.is_some())
                    .bind(limit + 1)
                    .persistent(self.prepared)
                    .fetch_all(db)
                    .await
            })
            .await?;
        assemble_feed(since, limit, rows, Ok)
    }

    async fn versions(&self, owners: &[String]) -> StoreResult<Vec<(String, i64)>> {
        self.call(async |db| {
            sqlx::query_as("SELECT user_id, version FROM task_counts WHERE user_id = ANY($1)")
                .bind(owners)
                .persistent(self.prepared)
                .fetch_all(db)
                .await
        })
        .await
    }

    async fn announce(&self, owners: &[String]) -> StoreResult<()> {
        self.call(async |db| {
            sqlx::query("SELECT pg_notify($1, owner) FROM unnest($2::text[]) AS owner")
                .bind(CHANGES_CHANNEL)
                .bind(owners)
                .persistent(self.prepared)
                .execute(db)
                .await
        })
        .await?;
        Ok(())
    }

    async fn writes(&self, owner: &str) -> StoreResult<Box<dyn Writes>> {
        // Without prepared statements each statement must run in a transaction (see above).
        let db = if self.prepared {
            Connection::Warm(self.pool.acquire().await?)
        } else {
            Connection::Transaction(self.pool.begin().await?)
        };
        Ok(Box::new(PgWrites {
            db,
            owner: owner.to_owned(),
            prepared: self.prepared,
            max_tasks: self.max_tasks_per_user,
            key: None,
        }))
    }

    async fn claim(&self, owner: &str, key: &IdempotencyKey) -> StoreResult<Claim> {
        let mut transaction = self.pool.begin().await?;
        // Held until the transaction ends: a second request with the key sees it taken (409)
        // instead of waiting. 64 bits of hash; the key has no space, so `key owner` is unique.
        let locked: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_xact_lock(hashtextextended($1 || ' ' || $2, 0))",
        )
        .bind(&key.key)
        .bind(owner)
        .persistent(self.prepared)
        .fetch_one(&mut *transaction)
        .await?;
        if !locked {
            transaction.rollback().await?;
            return Ok(Claim::InFlight);
        }
        // A statement of its own, after the lock: its snapshot sees what the key's previous
        // holder committed.
        let kept: Option<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT fingerprint, response FROM idempotency_keys \
             WHERE user_id = $1 AND key = $2 AND expires_at > now()",
        )
        .bind(owner)
        .bind(&key.key)
        .persistent(self.prepared)
        .fetch_optional(&mut *transaction)
        .await?;
        if let Some(claim) = kept_claim(kept, key) {
            transaction.rollback().await?;
            return Ok(claim);
        }
        Ok(Claim::First(Box::new(PgWrites {
            db: Connection::Transaction(transaction),
            owner: owner.to_owned(),
            prepared: self.prepared,
            max_tasks: self.max_tasks_per_user,
            key: Some((key.clone(), self.retention.idempotency_keys)),
        })))
    }

    async fn purge(&self) -> StoreResult<Purged> {
        let mut transaction = self.pool.begin().await?;
        // One purger at a time across instances: two would contend for the same rows.
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('task-api purge'))")
                .persistent(self.prepared)
                .fetch_one(&mut *transaction)
                .await?;
        if !locked {
            transaction.rollback().await?;
            return Ok(Purged::default());
        }
        // The oldest tombstones first; each owner's watermark moves to the newest one purged.
        let tombstones: i64 = sqlx::query_scalar(
            "WITH purged AS ( \
                 DELETE FROM task_tombstones WHERE (user_id, version) IN ( \
                     SELECT user_id, version FROM task_tombstones \
                     WHERE deleted_at < now() - make_interval(secs => $1) \
                     ORDER BY deleted_at LIMIT $2) \
                 RETURNING user_id, version \
             ), watermarks AS ( \
                 UPDATE task_counts SET purged_through = greatest(purged_through, newest.version) \
                 FROM (SELECT user_id, max(version) AS version FROM purged GROUP BY user_id) AS newest \
                 WHERE task_counts.user_id = newest.user_id \
                 RETURNING 1 \
             ) \
             SELECT count(*) FROM purged",
        )
        .bind(self.retention.tombstones.as_secs_f64())
        .bind(PURGE_BATCH)
        .persistent(self.prepared)
        .fetch_one(&mut *transaction)
        .await?;
        let keys = sqlx::query(
            "DELETE FROM idempotency_keys WHERE (user_id, key) IN ( \
                 SELECT user_id, key FROM idempotency_keys WHERE expires_at <= now() LIMIT $1)",
        )
        .bind(PURGE_BATCH)
        .persistent(self.prepared)
        .execute(&mut *transaction)
        .await?;
        // Owners who wrote as many times since their last compaction as they have tasks (at
        // least 64): their entries whose task has moved on, or is gone, are deleted. An entry
        // past the owner's version in this snapshot is a write this statement cannot see, and
        // stays; one superseded meanwhile is deleted at the next compaction.
        let compacted_owners: i64 = sqlx::query_scalar(
            "WITH due AS ( \
                 SELECT user_id, version FROM task_counts \
                 WHERE version - compacted_through >= greatest(total, 64) LIMIT $1 \
             ), compacted AS ( \
                 DELETE FROM task_changes AS logged USING due \
                 WHERE logged.user_id = due.user_id AND logged.version <= due.version \
                   AND NOT EXISTS (SELECT FROM tasks \
                       WHERE tasks.id = logged.task_id AND tasks.version = logged.version) \
             ), marked AS ( \
                 UPDATE task_counts SET compacted_through = due.version FROM due \
                 WHERE task_counts.user_id = due.user_id \
             ) \
             SELECT count(*) FROM due",
        )
        .bind(COMPACT_BATCH)
        .persistent(self.prepared)
        .fetch_one(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(Purged {
            tombstones: tombstones as u64,
            idempotency_keys: keys.rows_affected(),
            compacted_owners: compacted_owners as u64,
        })
    }

    async fn ping(&self) -> StoreResult<()> {
        self.call(async |db| sqlx::query("SELECT 1").persistent(self.prepared).execute(db).await)
            .await?;
        Ok(())
    }

    fn pool_status(&self) -> PoolStatus {
        let (size, idle) = self.pool.status();
        PoolStatus { size, idle }
    }
}

impl PostgresStore {
    async fn count(&self, owner: &str, filter: &Filter) -> StoreResult<i64> {
        let mut sql = count_statement::<Postgres>(owner, filter);
        self.call(async |db| sql.build_query_scalar().persistent(self.prepared).fetch_one(db).await)
            .await
    }
}

/// One owner's writes (see [`Writes`]).
struct PgWrites {
    db: Connection<Postgres>,
    owner: String,
    prepared: bool,
    max_tasks: i64,
    /// The idempotency key this transaction holds, and how long to keep its response.
    key: Option<(IdempotencyKey, std::time::Duration)>,
}

impl PgWrites {
    async fn exists(&mut self, id: i64) -> StoreResult<bool> {
        Ok(get(self.db.get(), self.prepared, &self.owner, id).await?.is_some())
    }
}

#[async_trait]
impl Writes for PgWrites {
    async fn create(&mut self, task: &NewTask) -> StoreResult<Task> {
        // The owner's row is taken first (created if need be, so that a brand-new owner's first
        // creates take turns too), and the count read under that lock: exact under any
        // concurrency. The trigger then counts the new task on the same row.
        let created = sqlx::query_as(concat!(
            "WITH owner AS ( \
                 INSERT INTO task_counts AS counts (user_id, total, completed, version) \
                 VALUES ($1, 0, 0, 0) \
                 ON CONFLICT (user_id) DO UPDATE SET total = counts.total \
                 RETURNING total) \
             INSERT INTO tasks (user_id, title, description, completed, priority, due_at, tags) \
             SELECT $1, $2, $3, $4, $6, $7, $8 FROM owner WHERE owner.total < $5 \
             RETURNING ",
            task_columns!()
        ))
        .bind(&self.owner)
        .bind(&task.title)
        .bind(&task.description)
        .bind(task.completed)
        .bind(self.max_tasks)
        .bind(task.priority.rank())
        .bind(task.due_at)
        .bind(Json(&task.tags))
        .persistent(self.prepared)
        .fetch_optional(self.db.get())
        .await?;
        created.ok_or(StoreError::TaskLimitReached)
    }

    async fn update(
        &mut self,
        id: i64,
        patch: &TaskPatch,
        precondition: &Precondition,
    ) -> StoreResult<Written<Task>> {
        // `updated_at` strictly moves forward even if two writes share a clock tick.
        let row = sqlx::query_as(concat!(
            "UPDATE tasks SET \
                 title = COALESCE($3, title), \
                 description = CASE WHEN $4 THEN $5 ELSE description END, \
                 completed = COALESCE($6, completed), \
                 priority = COALESCE($8, priority), \
                 due_at = CASE WHEN $9 THEN $10 ELSE due_at END, \
                 tags = COALESCE($11, tags), \
                 updated_at = GREATEST(now(), updated_at + interval '1 microsecond') \
             WHERE id = $1 AND user_id = $2 \
               AND ($7::timestamptz[] IS NULL OR updated_at = ANY($7)) \
             RETURNING ",
            task_columns!()
        ))
        .bind(id)
        .bind(&self.owner)
        .bind(&patch.title)
        .bind(patch.description.is_some())
        .bind(patch.description.as_ref().and_then(Option::as_deref))
        .bind(patch.completed)
        .bind(precondition.0.as_deref())
        .bind(patch.priority.map(Priority::rank))
        .bind(patch.due_at.is_some())
        .bind(patch.due_at.flatten())
        .bind(patch.tags.as_ref().map(Json))
        .persistent(self.prepared)
        .fetch_optional(self.db.get())
        .await?;
        written(row, precondition, || self.exists(id)).await
    }

    async fn toggle_completed(
        &mut self,
        id: i64,
        precondition: &Precondition,
    ) -> StoreResult<Written<Task>> {
        let row = sqlx::query_as(concat!(
            "UPDATE tasks SET completed = NOT completed, \
                 updated_at = GREATEST(now(), updated_at + interval '1 microsecond') \
             WHERE id = $1 AND user_id = $2 \
               AND ($3::timestamptz[] IS NULL OR updated_at = ANY($3)) \
             RETURNING ",
            task_columns!()
        ))
        .bind(id)
        .bind(&self.owner)
        .bind(precondition.0.as_deref())
        .persistent(self.prepared)
        .fetch_optional(self.db.get())
        .await?;
        written(row, precondition, || self.exists(id)).await
    }

    async fn delete(&mut self, id: i64, precondition: &Precondition) -> StoreResult<Written<()>> {
        let result = sqlx::query(
            "DELETE FROM tasks WHERE id = $1 AND user_id = $2 \
               AND ($3::timestamptz[] IS NULL OR updated_at = ANY($3))",
        )
        .bind(id)
        .bind(&self.owner)
        .bind(precondition.0.as_deref())
        .persistent(self.prepared)
        .execute(self.db.get())
        .await?;
        let row = (result.rows_affected() == 1).then_some(());
        written(row, precondition, || self.exists(id)).await
    }

    async fn commit(self: Box<Self>, kept: Option<&[u8]>) -> StoreResult<()> {
        let PgWrites { db, owner, prepared, key, .. } = *self;
        let mut transaction = match db {
            Connection::Transaction(transaction) => transaction,
            Connection::Warm(connection) => {
                connection.finish();
                return Ok(());
            }
            Connection::Pooled(_) => return Ok(()),
        };
        if let Some((key, ttl)) = key {
            let response = kept.ok_or_else(|| anyhow::anyhow!("a keyed write kept no response"))?;
            // An expired key not purged yet is replaced; a live one means another request
            // committed it first, despite the lock: roll back ours.
            let stored = sqlx::query(
                "INSERT INTO idempotency_keys (user_id, key, fingerprint, response, expires_at) \
                 VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) \
                 ON CONFLICT (user_id, key) DO UPDATE \
                     SET fingerprint = EXCLUDED.fingerprint, response = EXCLUDED.response, \
                         expires_at = EXCLUDED.expires_at \
                     WHERE idempotency_keys.expires_at <= now()",
            )
            .bind(&owner)
            .bind(&key.key)
            .bind(&key.fingerprint)
            .bind(response)
            .bind(ttl.as_secs_f64())
            .persistent(prepared)
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

async fn get(
    db: &mut PgConnection,
    prepared: bool,
    owner: &str,
    id: i64,
) -> Result<Option<Task>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        task_columns!(),
        " FROM tasks WHERE id = $1 AND user_id = $2"
    ))
    .bind(id)
    .bind(owner)
    .persistent(prepared)
    .fetch_optional(db)
    .await
}

/// The channel that [`TaskStore::announce`] notifies, with the owner as payload (see the
/// migration `20261202100000_notify_after_commit.sql`).
const CHANGES_CHANNEL: &str = "task_changes";

/// How long one attempt to connect the listener may take.
const LISTEN_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Listens for change notifications on `url` (a direct connection: `LISTEN` does not work
/// through a transaction-mode pooler) and hands them to `heard`, until it closes. Each
/// (re)connection is followed by [`Heard::Reconnected`] once `LISTEN` is in place: what was
/// notified while the listener was away is lost (PostgreSQL keeps nothing for an absent
/// listener), so every stream must read its log again.
pub async fn listen_for_changes(url: String, heard: mpsc::Sender<Heard>) {
    let initial_delay = std::time::Duration::from_millis(100);
    let mut delay = initial_delay;
    loop {
        match tokio::time::timeout(LISTEN_CONNECT_TIMEOUT, listener(&url)).await {
            Ok(Ok(mut listener)) => {
                delay = initial_delay;
                if heard.send(Heard::Reconnected).await.is_err() {
                    return;
                }
                // `Ok(None)`: the connection was lost. Either way, a fresh listener follows.
                while let Ok(Some(notification)) = listener.try_recv().await {
                    if heard.send(Heard::Changed(notification.payload().to_owned())).await.is_err()
                    {
                        return;
                    }
                }
                tracing::warn!("lost the LISTEN connection for live changes; reconnecting");
            }
            Ok(Err(err)) => tracing::warn!(error = %err, "could not LISTEN for live changes"),
            Err(_) => tracing::warn!("could not LISTEN for live changes: connecting timed out"),
        }
        if heard.is_closed() {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_secs(5));
    }
}

async fn listener(url: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANGES_CHANNEL).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::has_trigram;

    #[test]
    fn a_trigram_is_three_letters_or_digits_in_a_row() {
        for search in ["dentist", "Été", "100", "ab-cde", "x 日本語"] {
            assert!(has_trigram(search), "{search}");
        }
        for search in ["ab", "a-b-c", "10%", "%%%", "__", "é é é"] {
            assert!(!has_trigram(search), "{search}");
        }
    }
}
