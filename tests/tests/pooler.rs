//! Behind a real PgBouncer in transaction mode (production's shape on Neon): four instances
//! start at once on an empty database, given only the pooled URL; each one ends up serving, and
//! the schema is applied exactly once. (The whole contract suite also runs behind PgBouncer:
//! the `pgbouncer::` tests of every other file.)

use futures::future::join_all;
use integration_tests::{Backend, Database, Options, TestServer};
use sqlx::{Connection as _, Row as _};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_start_at_once_on_an_empty_database() {
    let database = Database::fresh(Backend::PgBouncer).await;
    let options =
        || Options { connect: Backend::PgBouncer.connect_options(), ..Options::default() };
    let servers = join_all((0..4).map(|_| TestServer::start_on(&database.url, options()))).await;

    for (i, server) in servers.iter().enumerate() {
        let client = server.client(&format!("instance-{i}-user"));
        let created = client
            .create_task()
            .body(client_sdk::types::TaskCreate::builder().title(format!("via instance {i}")))
            .send()
            .await
            .unwrap_or_else(|err| panic!("instance {i} does not serve: {err:?}"));
        assert_eq!(created.title, format!("via instance {i}"));
        assert_eq!(client.list_tasks().send().await.unwrap().len(), 1);
    }

    // The simple query protocol, so that this check itself works through the pooler.
    let mut db = sqlx::PgConnection::connect(&database.url).await.unwrap();
    let applied = sqlx::raw_sql("SELECT version, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut db)
        .await
        .unwrap();
    let versions: Vec<i64> = applied.iter().map(|row| row.get("version")).collect();
    assert!(applied.iter().all(|row| row.get::<bool, _>("success")));
    let expected: Vec<i64> = sqlx::migrate!("../migrations/postgres")
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .collect();
    assert_eq!(versions, expected, "every migration applied, each exactly once");
}
