//! Migrations stay exact while older instances keep writing (a rolling deploy), on PostgreSQL.
//!
//! The migration that created `task_counts` backfilled it from a snapshot and only then created
//! its triggers: a task committed in between by another connection was counted by neither. This
//! reproduces that race against the old migration, shows that the recount migration repairs
//! it, and that the recount itself cannot be raced: a concurrent insert waits for it.
//! (SQLite's migrations hold its one write lock from their first statement: no such race.)

use std::time::Duration;

use integration_tests::{Backend, Database};
use sqlx::{Connection as _, PgConnection, PgPool};

const INSERT: &str = "INSERT INTO tasks (user_id, title) VALUES ('u', 't')";

async fn stored_and_real(pool: &PgPool) -> (i64, i64) {
    let stored: i64 = sqlx::query_scalar("SELECT total FROM task_counts WHERE user_id = 'u'")
        .fetch_one(pool)
        .await
        .unwrap();
    let real: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE user_id = 'u'")
        .fetch_one(pool)
        .await
        .unwrap();
    (stored, real)
}

/// Applies the first `n` embedded migrations with sqlx's own runner.
async fn migrate_to(pool: &PgPool, n: usize) -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("../migrations/postgres");
    migrator.migrations = migrator.migrations[..n].to_vec().into();
    migrator.run(pool).await.unwrap();
    sqlx::migrate!("../migrations/postgres")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_counts_migration_loses_a_concurrent_task_and_the_recount_repairs_it() {
    let database = Database::fresh(Backend::Postgres).await;
    let pool = PgPool::connect(&database.url).await.unwrap();
    let all = migrate_to(&pool, 1).await;
    for _ in 0..2 {
        sqlx::query(INSERT).execute(&pool).await.unwrap();
    }
    // The old migration, run as it ran, with another instance's insert between its two steps.
    let counts = &all.migrations[1];
    assert!(counts.description.contains("task counts"), "{}", counts.description);
    let (backfill, triggers) = counts.sql.as_str().split_once("CREATE FUNCTION").unwrap();
    let mut migrator = PgConnection::connect(&database.url).await.unwrap();
    sqlx::raw_sql("BEGIN").execute(&mut migrator).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(backfill.to_owned())).execute(&mut migrator).await.unwrap();
    sqlx::query(INSERT).execute(&pool).await.unwrap(); // an older instance, still writing
    let rest = format!("CREATE FUNCTION{triggers}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(rest)).execute(&mut migrator).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ($1, $2, TRUE, $3, 0)",
    )
    .bind(counts.version)
    .bind(&*counts.description)
    .bind(&*counts.checksum)
    .execute(&mut migrator)
    .await
    .unwrap();
    sqlx::raw_sql("COMMIT").execute(&mut migrator).await.unwrap();
    assert_eq!(stored_and_real(&pool).await, (2, 3), "the race as reported: one task lost");

    // The service's start-up applies the rest, the recount among them.
    server::store::connect(&database.url, &Backend::Postgres.connect_options()).await.unwrap();
    assert_eq!(stored_and_real(&pool).await, (3, 3), "repaired");
    // And deleting every task no longer breaks the count's CHECK.
    sqlx::query("DELETE FROM tasks WHERE user_id = 'u'").execute(&pool).await.unwrap();
    assert_eq!(stored_and_real(&pool).await, (0, 0));
}

/// The recount as `sql`, while another instance's insert is uncommitted when it starts and
/// commits while it runs; returns the stored and the real count after both.
async fn recount_racing_a_writer(sql: String) -> (i64, i64) {
    let database = Database::fresh(Backend::Postgres).await;
    let pool = PgPool::connect(&database.url).await.unwrap();
    migrate_to(&pool, 2).await;
    for _ in 0..2 {
        sqlx::query(INSERT).execute(&pool).await.unwrap();
    }
    // Miscounted, as the race above leaves it.
    sqlx::query("UPDATE task_counts SET total = 1 WHERE user_id = 'u'")
        .execute(&pool)
        .await
        .unwrap();
    let mut writer = PgConnection::connect(&database.url).await.unwrap();
    sqlx::raw_sql("BEGIN").execute(&mut writer).await.unwrap();
    sqlx::query(INSERT).execute(&mut writer).await.unwrap();
    let url = database.url.clone();
    let recount = tokio::spawn(async move {
        let mut migrator = PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql("BEGIN").execute(&mut migrator).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut migrator).await.unwrap();
        sqlx::raw_sql("COMMIT").execute(&mut migrator).await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::raw_sql("COMMIT").execute(&mut writer).await.unwrap();
    recount.await.unwrap();
    stored_and_real(&pool).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recount_is_exact_while_another_instance_writes() {
    let recount = sqlx::migrate!("../migrations/postgres").migrations[2].clone();
    assert!(recount.description.contains("exact"), "{}", recount.description);
    let sql = recount.sql.as_str().to_owned();
    assert_eq!(recount_racing_a_writer(sql.clone()).await, (3, 3), "exact");
    // The same interleaving without the lock loses the concurrent insert: the lock is what
    // makes the recount exact.
    let lock = "LOCK TABLE tasks IN SHARE ROW EXCLUSIVE MODE;";
    assert!(sql.contains(lock));
    assert_eq!(recount_racing_a_writer(sql.replace(lock, "")).await, (2, 3), "unlocked");
}
