//! The SQLite store: the zero-install default (`sqlite://tasks.db`) and the second backend of
//! the test suite. WAL mode lets readers run beside the single writer; `synchronous=NORMAL` in
//! WAL keeps every committed write across a process crash (not across power loss).

use std::{str::FromStr, time::Duration};

use anyhow::Context as _;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    FromRow, Sqlite, SqliteConnection, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use super::{
    ConnectOptions, ListQuery, NewTask, Page, PoolStatus, Precondition, SortValue, StatusFilter,
    StoreError, StoreResult, Task, TaskPatch, TaskStore, Written, after_condition, count_statement,
    list_start, list_total, order_by, split_page, status_condition, wait_until_reachable, written,
};

pub struct SqliteStore {
    pool: SqlitePool,
}

/// Timestamps are stored as microseconds since the Unix epoch.
#[derive(FromRow)]
struct TaskRow {
    id: i64,
    user_id: String,
    title: String,
    description: Option<String>,
    completed: bool,
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
        let timestamp = |micros: i64| {
            DateTime::<Utc>::from_timestamp_micros(micros)
                .ok_or_else(|| anyhow::anyhow!("task {} has an out-of-range timestamp", row.id))
        };
        Ok(Task {
            id: row.id,
            created_at: timestamp(row.created_at)?,
            updated_at: timestamp(row.updated_at)?,
            user_id: row.user_id,
            title: row.title,
            description: row.description,
            completed: row.completed,
        })
    }
}

fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
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
        Ok(Self { pool })
    }

    async fn exists(&self, owner: &str, id: i64) -> StoreResult<bool> {
        Ok(self.get(owner, id).await?.is_some())
    }

    async fn count(&self, owner: &str, status: StatusFilter) -> StoreResult<i64> {
        let mut sql = count_statement::<Sqlite>(owner, status);
        Ok(sql.build_query_scalar().fetch_one(&self.pool).await?)
    }
}

#[async_trait]
impl TaskStore for SqliteStore {
    async fn list(&self, owner: &str, query: &ListQuery) -> StoreResult<Page> {
        let mut sql = list_start::<Sqlite>(owner, query);
        sql.push(status_condition(query.status));
        if let Some(after) = &query.after {
            sql.push(after_condition(query.sort, query.order));
            match &after.value {
                SortValue::Time(at) => sql.push_bind(at.timestamp_micros()),
                SortValue::Title(title) => sql.push_bind(title.as_str()),
            };
            sql.push(", ").push_bind(after.id).push(")");
        }
        sql.push(order_by(query.sort, query.order));
        if query.is_paged() {
            // SQLite needs a LIMIT before an OFFSET; -1 means "no limit".
            sql.push(" LIMIT ").push_bind(query.fetch_limit().unwrap_or(-1));
            sql.push(" OFFSET ").push_bind(query.offset);
        }
        let rows: Vec<ListedRow> = sql.build_query_as().fetch_all(&self.pool).await?;
        let first_total = rows.first().map(|row| row.total);
        let total =
            list_total(query, rows.len(), first_total, || self.count(owner, query.status)).await?;
        let mut tasks =
            rows.into_iter().map(|row| Task::try_from(row.task)).collect::<StoreResult<_>>()?;
        let next = split_page(query, &mut tasks);
        Ok(Page { tasks, total, next })
    }

    async fn create(&self, owner: &str, task: &NewTask) -> StoreResult<Task> {
        let now = now_micros();
        let row: TaskRow = sqlx::query_as(
            "INSERT INTO tasks (user_id, title, description, completed, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) \
             RETURNING id, user_id, title, description, completed, created_at, updated_at",
        )
        .bind(owner)
        .bind(&task.title)
        .bind(&task.description)
        .bind(task.completed)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        row.try_into()
    }

    async fn get(&self, owner: &str, id: i64) -> StoreResult<Option<Task>> {
        into_task(
            sqlx::query_as(
                "SELECT id, user_id, title, description, completed, created_at, updated_at \
                 FROM tasks WHERE id = $1 AND user_id = $2",
            )
            .bind(id)
            .bind(owner)
            .fetch_optional(&self.pool)
            .await?,
        )
    }

    async fn update(
        &self,
        owner: &str,
        id: i64,
        patch: &TaskPatch,
        precondition: &Precondition,
    ) -> StoreResult<Written<Task>> {
        let row = sqlx::query_as(
            "UPDATE tasks SET \
                 title = COALESCE($3, title), \
                 description = CASE WHEN $4 THEN $5 ELSE description END, \
                 completed = COALESCE($6, completed), \
                 updated_at = max($7, updated_at + 1) \
             WHERE id = $1 AND user_id = $2 \
               AND ($8 IS NULL OR updated_at IN (SELECT value FROM json_each($8))) \
             RETURNING id, user_id, title, description, completed, created_at, updated_at",
        )
        .bind(id)
        .bind(owner)
        .bind(&patch.title)
        .bind(patch.description.is_some())
        .bind(patch.description.as_ref().and_then(Option::as_deref))
        .bind(patch.completed)
        .bind(now_micros())
        .bind(expected_micros(precondition))
        .fetch_optional(&self.pool)
        .await?;
        written(into_task(row)?, precondition, || self.exists(owner, id)).await
    }

    async fn toggle_completed(
        &self,
        owner: &str,
        id: i64,
        precondition: &Precondition,
    ) -> StoreResult<Written<Task>> {
        let row = sqlx::query_as(
            "UPDATE tasks SET completed = NOT completed, updated_at = max($3, updated_at + 1) \
             WHERE id = $1 AND user_id = $2 \
               AND ($4 IS NULL OR updated_at IN (SELECT value FROM json_each($4))) \
             RETURNING id, user_id, title, description, completed, created_at, updated_at",
        )
        .bind(id)
        .bind(owner)
        .bind(now_micros())
        .bind(expected_micros(precondition))
        .fetch_optional(&self.pool)
        .await?;
        written(into_task(row)?, precondition, || self.exists(owner, id)).await
    }

    async fn delete(
        &self,
        owner: &str,
        id: i64,
        precondition: &Precondition,
    ) -> StoreResult<Written<()>> {
        let result = sqlx::query(
            "DELETE FROM tasks WHERE id = $1 AND user_id = $2 \
               AND ($3 IS NULL OR updated_at IN (SELECT value FROM json_each($3)))",
        )
        .bind(id)
        .bind(owner)
        .bind(expected_micros(precondition))
        .execute(&self.pool)
        .await?;
        let row = (result.rows_affected() == 1).then_some(());
        written(row, precondition, || self.exists(owner, id)).await
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn pool_status(&self) -> PoolStatus {
        PoolStatus { size: self.pool.size(), idle: self.pool.num_idle() }
    }
}
