//! The PostgreSQL store (production, Neon). TLS and `sslmode` come from the URL via rustls.
//!
//! Prepared statements: sqlx caches one named prepared statement per SQL text per connection.
//! Neon's pooler (PgBouncer in transaction mode with `max_prepared_statements`) supports
//! protocol-level prepared statements, so the cache stays on; `DATABASE_STATEMENT_CACHE=0`
//! turns it off for a pooler that does not.

use std::str::FromStr;

use anyhow::Context as _;
use async_trait::async_trait;
use sqlx::{
    FromRow, PgConnection, PgPool, Postgres, QueryBuilder,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use super::{
    ConnectOptions, ListQuery, NewTask, Page, Precondition, StatusFilter, StoreResult, Task,
    TaskPatch, TaskStore, Written, order_by, status_condition, wait_until_reachable, written,
};

pub struct PostgresStore {
    pool: PgPool,
}

#[derive(FromRow)]
struct ListedRow {
    #[sqlx(flatten)]
    task: Task,
    total: i64,
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

        sqlx::migrate!("../migrations/postgres")
            .run(&pool)
            .await
            .context("applying PostgreSQL migrations failed")?;
        Ok(Self { pool })
    }
}

#[async_trait]
impl TaskStore for PostgresStore {
    async fn list(&self, owner: &str, query: &ListQuery) -> StoreResult<Page> {
        let mut sql = QueryBuilder::<Postgres>::new(
            "SELECT id, user_id, title, description, completed, created_at, updated_at, \
             COUNT(*) OVER () AS total FROM tasks WHERE user_id = ",
        );
        sql.push_bind(owner);
        sql.push(status_condition(query.status));
        sql.push(order_by(query.sort, query.order));
        if let Some(limit) = query.limit {
            sql.push(" LIMIT ").push_bind(limit);
        }
        sql.push(" OFFSET ").push_bind(query.offset);
        let rows: Vec<ListedRow> = sql.build_query_as().fetch_all(&self.pool).await?;
        let total = match rows.first() {
            Some(row) => row.total,
            // An offset past the end returns no rows, and so no window count either.
            None if query.offset > 0 => self.count(owner, query.status).await?,
            None => 0,
        };
        Ok(Page { tasks: rows.into_iter().map(|row| row.task).collect(), total })
    }

    async fn create(&self, owner: &str, task: &NewTask) -> StoreResult<Task> {
        Ok(sqlx::query_as(
            "INSERT INTO tasks (user_id, title, description, completed) VALUES ($1, $2, $3, $4) \
             RETURNING id, user_id, title, description, completed, created_at, updated_at",
        )
        .bind(owner)
        .bind(&task.title)
        .bind(&task.description)
        .bind(task.completed)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn get(&self, owner: &str, id: i64) -> StoreResult<Option<Task>> {
        Ok(sqlx::query_as(
            "SELECT id, user_id, title, description, completed, created_at, updated_at \
             FROM tasks WHERE id = $1 AND user_id = $2",
        )
        .bind(id)
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn update(
        &self,
        owner: &str,
        id: i64,
        patch: &TaskPatch,
        precondition: &Precondition,
    ) -> StoreResult<Written<Task>> {
        // `updated_at` strictly moves forward even if two writes share a clock tick.
        let row = sqlx::query_as(
            "UPDATE tasks SET \
                 title = COALESCE($3, title), \
                 description = CASE WHEN $4 THEN $5 ELSE description END, \
                 completed = COALESCE($6, completed), \
                 updated_at = GREATEST(now(), updated_at + interval '1 microsecond') \
             WHERE id = $1 AND user_id = $2 \
               AND ($7::timestamptz[] IS NULL OR updated_at = ANY($7)) \
             RETURNING id, user_id, title, description, completed, created_at, updated_at",
        )
        .bind(id)
        .bind(owner)
        .bind(&patch.title)
        .bind(patch.description.is_some())
        .bind(patch.description.as_ref().and_then(Option::as_deref))
        .bind(patch.completed)
        .bind(precondition.0.as_deref())
        .fetch_optional(&self.pool)
        .await?;
        written(row, precondition, || self.exists(owner, id)).await
    }

    async fn toggle_completed(
        &self,
        owner: &str,
        id: i64,
        precondition: &Precondition,
    ) -> StoreResult<Written<Task>> {
        let row = sqlx::query_as(
            "UPDATE tasks SET completed = NOT completed, \
                 updated_at = GREATEST(now(), updated_at + interval '1 microsecond') \
             WHERE id = $1 AND user_id = $2 \
               AND ($3::timestamptz[] IS NULL OR updated_at = ANY($3)) \
             RETURNING id, user_id, title, description, completed, created_at, updated_at",
        )
        .bind(id)
        .bind(owner)
        .bind(precondition.0.as_deref())
        .fetch_optional(&self.pool)
        .await?;
        written(row, precondition, || self.exists(owner, id)).await
    }

    async fn delete(
        &self,
        owner: &str,
        id: i64,
        precondition: &Precondition,
    ) -> StoreResult<Written<()>> {
        let result = sqlx::query(
            "DELETE FROM tasks WHERE id = $1 AND user_id = $2 \
               AND ($3::timestamptz[] IS NULL OR updated_at = ANY($3))",
        )
        .bind(id)
        .bind(owner)
        .bind(precondition.0.as_deref())
        .execute(&self.pool)
        .await?;
        let row = (result.rows_affected() == 1).then_some(());
        written(row, precondition, || self.exists(owner, id)).await
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

impl PostgresStore {
    async fn exists(&self, owner: &str, id: i64) -> StoreResult<bool> {
        Ok(self.get(owner, id).await?.is_some())
    }

    async fn count(&self, owner: &str, status: StatusFilter) -> StoreResult<i64> {
        let mut sql = QueryBuilder::<Postgres>::new("SELECT COUNT(*) FROM tasks WHERE user_id = ");
        sql.push_bind(owner);
        sql.push(status_condition(status));
        Ok(sql.build_query_scalar().fetch_one(&self.pool).await?)
    }
}
