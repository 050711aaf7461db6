//! Migrations stay exact while older instances keep writing (a rolling deploy), on PostgreSQL.
//!
//! The migration that created `task_counts` backfilled it from a snapshot and only then created
//! its triggers: a task committed in between by another connection was counted by neither. This
//! reproduces that race against the old migration, shows that the recount migration repairs
//! it, and that the recount itself cannot be raced: a concurrent insert waits for it.
//! (SQLite's migrations hold its one write lock from their first statement: no such race.)
//!
//! And the move of the change feed's index out of `tasks`: the feed still finds every task
//! written before it, and a write that changes no indexed column becomes heap-only; then that
//! index made append-only, its superseded entries left to the upkeep job; and the old CHECK
//! constraints, now rules of the write trigger, refusing what they refused. And a schema that
//! drifted from the code: a listing fails rather than decoding what it cannot read.

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

/// Whether one toggle of task `id` is a HOT (heap-only) update: PostgreSQL's own count of the
/// transaction's updates, read before it ends (on a new connection: its counts are this
/// transaction's alone, none from earlier ones waiting to be reported).
async fn toggle_is_heap_only(url: &str, id: i64) -> bool {
    let db = &mut PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql("BEGIN").execute(&mut *db).await.unwrap();
    sqlx::query("UPDATE tasks SET completed = NOT completed WHERE id = $1")
        .bind(id)
        .execute(&mut *db)
        .await
        .unwrap();
    let (updated, heap_only): (i64, i64) = sqlx::query_as(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relname = 'tasks'",
    )
    .fetch_one(&mut *db)
    .await
    .unwrap();
    sqlx::raw_sql("COMMIT").execute(&mut *db).await.unwrap();
    assert_eq!(updated, 1);
    heap_only == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_feed_index_moves_a_toggle_is_heap_only_and_the_feed_finds_every_task() {
    let database = Database::fresh(Backend::Postgres).await;
    let pool = PgPool::connect(&database.url).await.unwrap();
    let all = sqlx::migrate!("../migrations/postgres");
    let moved = all.migrations.iter().position(|m| m.description.contains("hot updates")).unwrap();
    migrate_to(&pool, moved).await;
    let ids = three_tasks(&pool).await;
    // Before: the version stamp changes an indexed column, so every write touches every index.
    assert!(!toggle_is_heap_only(&database.url, ids[0]).await);

    let store =
        server::store::connect(&database.url, &Backend::Postgres.connect_options()).await.unwrap();
    assert!(toggle_is_heap_only(&database.url, ids[1]).await, "a toggle touches no index any more");

    // The feed reads every task, with the version of its last write, in the order written.
    assert_eq!(fed(&*store).await, [(ids[2], 3), (ids[0], 4), (ids[1], 5)]);
}

/// Three tasks of user `u`, created outside the service; their ids.
async fn three_tasks(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar(
        "INSERT INTO tasks (user_id, title) SELECT 'u', 'task ' || n FROM generate_series(1, 3) AS n \
         RETURNING id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The feed from the start as (task id, version) pairs; a deletion's id negated.
async fn fed(store: &dyn server::store::TaskStore) -> Vec<(i64, i64)> {
    let server::store::Feed::Changes(batch) = store.changes("u", Some(0), 1000).await.unwrap()
    else {
        panic!("a cursor of 0 is never gone")
    };
    batch
        .changes
        .iter()
        .zip(&batch.versions)
        .map(|(change, version)| match change {
            server::store::Change::Upsert(task) => (task.id, *version),
            server::store::Change::Delete { id } => (-id, *version),
        })
        .collect()
}

async fn logged(pool: &PgPool, from: &str) -> Vec<(i64, i64)> {
    let sql = format!("SELECT task_id, version FROM {from} WHERE user_id = 'u' ORDER BY version");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_only_log_feeds_each_task_once_and_upkeep_deletes_what_is_superseded() {
    let database = Database::fresh(Backend::Postgres).await;
    let pool = PgPool::connect(&database.url).await.unwrap();
    let all = sqlx::migrate!("../migrations/postgres");
    let appended =
        all.migrations.iter().position(|m| m.description.contains("append only")).unwrap();
    migrate_to(&pool, appended).await;
    let ids = three_tasks(&pool).await;
    sqlx::query("UPDATE tasks SET completed = TRUE WHERE id = $1")
        .bind(ids[0])
        .execute(&pool)
        .await
        .unwrap();
    let before = [(ids[1], 2), (ids[2], 3), (ids[0], 4)];
    assert_eq!(logged(&pool, "task_versions").await, before);

    let store =
        server::store::connect(&database.url, &Backend::Postgres.connect_options()).await.unwrap();
    assert_eq!(fed(&*store).await, before, "the entries are carried over");
    let unconditionally = &server::store::Precondition(None);
    for _ in 0..100 {
        store.toggle_completed("u", ids[1], unconditionally).await.unwrap();
    }
    store.delete("u", ids[2], unconditionally).await.unwrap();
    assert_eq!(logged(&pool, "task_changes").await.len(), 103, "one entry per write, kept");
    let now = [(ids[0], 4), (ids[1], 104), (-ids[2], 105)];
    assert_eq!(fed(&*store).await, now, "a superseded entry is skipped");
    // What an older instance reads during a rolling deploy: each live task's latest version.
    assert_eq!(logged(&pool, "task_versions").await, [(ids[0], 4), (ids[1], 104)]);

    let purged = store.purge().await.unwrap();
    assert_eq!(purged.compacted_owners, 1, "104 writes since the last compaction, 2 tasks");
    assert_eq!(logged(&pool, "task_changes").await, [(ids[0], 4), (ids[1], 104)]);
    assert_eq!(fed(&*store).await, now);
    assert_eq!(store.purge().await.unwrap().compacted_owners, 0, "nothing new to compact");
    // A few writes more are not worth a compaction yet; the feed reads past them.
    store.toggle_completed("u", ids[0], unconditionally).await.unwrap();
    assert_eq!(store.purge().await.unwrap().compacted_owners, 0);
    assert_eq!(fed(&*store).await, [(ids[1], 104), (-ids[2], 105), (ids[0], 106)]);
}

/// The SQLSTATE and constraint name with which `sql` fails.
async fn refusal(pool: &PgPool, sql: &'static str) -> (String, String) {
    let err = sqlx::raw_sql(sql).execute(pool).await.expect_err(sql);
    let err = err.as_database_error().expect("a database error");
    (err.code().unwrap().into_owned(), err.constraint().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_of_the_old_check_constraints_hold_in_the_write_trigger() {
    let database = Database::fresh(Backend::Postgres).await;
    let pool = PgPool::connect(&database.url).await.unwrap();
    server::store::connect(&database.url, &Backend::Postgres.connect_options()).await.unwrap();
    let checks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_constraint WHERE contype = 'c' \
         AND conrelid IN ('tasks'::regclass, 'task_counts'::regclass)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(checks, 0, "no CHECK constraint left to compile on every write");
    let ids = three_tasks(&pool).await;
    let refused = [
        ("INSERT INTO tasks (user_id, title) VALUES ('', 't')", "tasks_user_id_check"),
        ("INSERT INTO tasks (user_id, title) VALUES ('u', ' ')", "tasks_title_check"),
        ("UPDATE tasks SET title = repeat('x', 201) WHERE user_id = 'u'", "tasks_title_check"),
        ("UPDATE tasks SET description = '' WHERE user_id = 'u'", "tasks_description_check"),
        ("UPDATE tasks SET priority = 4 WHERE user_id = 'u'", "tasks_priority_check"),
        // The owner's counts, made wrong by hand: the next write that would go below zero fails.
        (
            "UPDATE task_counts SET total = 0 WHERE user_id = 'u'; DELETE FROM tasks WHERE user_id = 'u'",
            "task_counts_total_check",
        ),
        (
            "UPDATE tasks SET completed = TRUE WHERE user_id = 'u'; \
             UPDATE task_counts SET completed = 0 WHERE user_id = 'u'; \
             UPDATE tasks SET completed = FALSE WHERE user_id = 'u'",
            "task_counts_check",
        ),
    ];
    for (sql, rule) in refused {
        assert_eq!(refusal(&pool, sql).await, ("23514".to_owned(), rule.to_owned()), "{sql}");
    }
    // Each statement failed whole: nothing of the above was written.
    assert_eq!(stored_and_real(&pool).await, (3, 3));
    let (title, completed): (String, bool) =
        sqlx::query_as("SELECT title, completed FROM tasks WHERE id = $1")
            .bind(ids[0])
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((title.as_str(), completed), ("task 1", false));
    // Values inside the rules pass, at their edges too.
    sqlx::raw_sql(
        "UPDATE tasks SET title = repeat('x', 200), description = repeat('d', 1000), priority = 3, \
         completed = TRUE WHERE user_id = 'u'; \
         UPDATE tasks SET description = NULL, priority = 0 WHERE user_id = 'u'; \
         DELETE FROM tasks WHERE user_id = 'u'",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(stored_and_real(&pool).await, (0, 0));
}

/// A column whose type drifted from the code fails a listing instead of being decoded as what it
/// is not: a listing checks its first row's column types (not every row's, see
/// `store/postgres.rs`). `timestamp` and `timestamptz` travel alike, 8 bytes of microseconds, so
/// a listing that checked no row would answer with every time shifted by the server's zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_whose_column_types_drifted_fails_rather_than_decoding_them() {
    let database = Database::fresh(Backend::Postgres).await;
    let store =
        server::store::connect(&database.url, &Backend::Postgres.connect_options()).await.unwrap();
    let pool = PgPool::connect(&database.url).await.unwrap();
    three_tasks(&pool).await;
    let listing = server::store::ListQuery::default();
    assert_eq!(store.list("u", &listing).await.unwrap().tasks.len(), 3);

    sqlx::raw_sql("ALTER TABLE tasks ALTER COLUMN updated_at TYPE timestamp")
        .execute(&pool)
        .await
        .unwrap();
    // A fresh store: the other one's connections remember the statements' old result types.
    let store =
        server::store::connect(&database.url, &Backend::Postgres.connect_options()).await.unwrap();
    let drifted = store.list("u", &listing).await;
    assert!(drifted.is_err(), "a drifted column was decoded: {drifted:?}");
}
