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

use std::{str::FromStr, time::Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use sqlx::{
    FromRow, PgConnection, PgPool, Postgres,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use super::{
    ConnectOptions, ListQuery, NewTask, Page, PoolStatus, Precondition, SortValue, StatusFilter,
    StoreResult, Task, TaskPatch, TaskStore, Written, after_condition, count_statement, list_start,
    list_total, order_by, split_page, status_condition, wait_until_reachable, written,
};

pub struct PostgresStore {
    pool: PgPool,
    /// Named prepared statements may be used (`DATABASE_STATEMENT_CACHE` is not 0).
    prepared: bool,
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

        migrate(&pool).await.context("applying PostgreSQL migrations failed")?;
        Ok(Self { pool, prepared: options.statement_cache_capacity > 0 })
    }

    /// Runs one store call's statements on one connection; without prepared statements inside
    /// a transaction (see the module documentation).
    async fn call<T>(
        &self,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> StoreResult<T> {
        if self.prepared {
            let mut connection = self.pool.acquire().await?;
            Ok(work(&mut connection).await?)
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

#[async_trait]
impl TaskStore for PostgresStore {
    async fn list(&self, owner: &str, query: &ListQuery) -> StoreResult<Page> {
        let mut sql = list_start::<Postgres>(owner, query);
        sql.push(status_condition(query.status));
        if let Some(after) = &query.after {
            sql.push(after_condition(query.sort, query.order));
            match &after.value {
                SortValue::Time(at) => sql.push_bind(*at),
                SortValue::Title(title) => sql.push_bind(title.as_str()),
            };
            sql.push(", ").push_bind(after.id).push(")");
        }
        sql.push(order_by(query.sort, query.order));
        if let Some(limit) = query.fetch_limit() {
            sql.push(" LIMIT ").push_bind(limit);
        }
        if query.offset > 0 {
            sql.push(" OFFSET ").push_bind(query.offset);
        }
        let rows: Vec<ListedRow> = self
            .call(async |db| sql.build_query_as().persistent(self.prepared).fetch_all(db).await)
            .await?;
        let first_total = rows.first().map(|row| row.total);
        let total =
            list_total(query, rows.len(), first_total, || self.count(owner, query.status)).await?;
        let mut tasks: Vec<Task> = rows.into_iter().map(|row| row.task).collect();
        let next = split_page(query, &mut tasks);
        Ok(Page { tasks, total, next })
    }

    async fn create(&self, owner: &str, task: &NewTask) -> StoreResult<Task> {
        self.call(async |db| {
            sqlx::query_as(
                "INSERT INTO tasks (user_id, title, description, completed) \
                 VALUES ($1, $2, $3, $4) \
                 RETURNING id, user_id, title, description, completed, created_at, updated_at",
            )
            .bind(owner)
            .bind(&task.title)
            .bind(&task.description)
            .bind(task.completed)
            .persistent(self.prepared)
            .fetch_one(db)
            .await
        })
        .await
    }

    async fn get(&self, owner: &str, id: i64) -> StoreResult<Option<Task>> {
        self.call(async |db| {
            sqlx::query_as(
                "SELECT id, user_id, title, description, completed, created_at, updated_at \
                 FROM tasks WHERE id = $1 AND user_id = $2",
            )
            .bind(id)
            .bind(owner)
            .persistent(self.prepared)
            .fetch_optional(db)
            .await
        })
        .await
    }

    async fn update(
        &self,
        owner: &str,
        id: i64,
        patch: &TaskPatch,
        precondition: &Precondition,
    ) -> StoreResult<Written<Task>> {
        // `updated_at` strictly moves forward even if two writes share a clock tick.
        let row = self
            .call(async |db| {
                sqlx::query_as(
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
                .persistent(self.prepared)
                .fetch_optional(db)
                .await
            })
            .await?;
        written(row, precondition, || self.exists(owner, id)).await
    }

    async fn toggle_completed(
        &self,
        owner: &str,
        id: i64,
        precondition: &Precondition,
    ) -> StoreResult<Written<Task>> {
        let row = self
            .call(async |db| {
                sqlx::query_as(
                    "UPDATE tasks SET completed = NOT completed, \
                 updated_at = GREATEST(now(), updated_at + interval '1 microsecond') \
             WHERE id = $1 AND user_id = $2 \
               AND ($3::timestamptz[] IS NULL OR updated_at = ANY($3)) \
             RETURNING id, user_id, title, description, completed, created_at, updated_at",
                )
                .bind(id)
                .bind(owner)
                .bind(precondition.0.as_deref())
                .persistent(self.prepared)
                .fetch_optional(db)
                .await
            })
            .await?;
        written(row, precondition, || self.exists(owner, id)).await
    }

    async fn delete(
        &self,
        owner: &str,
        id: i64,
        precondition: &Precondition,
    ) -> StoreResult<Written<()>> {
        let result = self
            .call(async |db| {
                sqlx::query(
                    "DELETE FROM tasks WHERE id = $1 AND user_id = $2 \
               AND ($3::timestamptz[] IS NULL OR updated_at = ANY($3))",
                )
                .bind(id)
                .bind(owner)
                .bind(precondition.0.as_deref())
                .persistent(self.prepared)
                .execute(db)
                .await
            })
            .await?;
        let row = (result.rows_affected() == 1).then_some(());
        written(row, precondition, || self.exists(owner, id)).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.call(async |db| sqlx::query("SELECT 1").persistent(self.prepared).execute(db).await)
            .await?;
        Ok(())
    }

    fn pool_status(&self) -> PoolStatus {
        PoolStatus { size: self.pool.size(), idle: self.pool.num_idle() }
    }
}

impl PostgresStore {
    async fn exists(&self, owner: &str, id: i64) -> StoreResult<bool> {
        Ok(self.get(owner, id).await?.is_some())
    }

    async fn count(&self, owner: &str, status: StatusFilter) -> StoreResult<i64> {
        let mut sql = count_statement::<Postgres>(owner, status);
        self.call(async |db| sql.build_query_scalar().persistent(self.prepared).fetch_one(db).await)
            .await
    }
}
