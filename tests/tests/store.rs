//! The storage conformance suite: the `TaskStore` trait itself, on both implementations, for
//! what the HTTP suite cannot see directly (exact timestamps, tie-breaks, totals past the end).

use std::sync::Arc;

use integration_tests::{Backend, Database, on_both_databases};
use server::store::{
    self, ConnectOptions, ListQuery, NewTask, SortKey, SortOrder, StatusFilter, TaskPatch,
    TaskStore,
};

on_both_databases!(
    every_call_is_scoped_by_owner,
    patches_change_only_what_they_name,
    updated_at_strictly_increases_even_within_a_clock_tick,
    listing_orders_ties_by_id_and_counts_before_paging,
    timestamps_round_trip_to_the_microsecond,
);

async fn open(backend: Backend) -> (Arc<dyn TaskStore>, Database) {
    let database = Database::fresh(backend).await;
    let store = store::connect(&database.url, &ConnectOptions::default()).await.unwrap();
    (store, database)
}

fn new_task(title: &str) -> NewTask {
    NewTask { title: title.into(), description: Some("d".into()), completed: false }
}

async fn every_call_is_scoped_by_owner(backend: Backend) {
    let (store, _db) = open(backend).await;
    let task = store.create("alice", &new_task("mine")).await.unwrap();
    let patch = TaskPatch { title: Some("stolen".into()), ..TaskPatch::default() };
    assert_eq!(store.get("bob", task.id).await.unwrap(), None);
    assert_eq!(store.update("bob", task.id, &patch).await.unwrap(), None);
    assert_eq!(store.toggle_completed("bob", task.id).await.unwrap(), None);
    assert!(!store.delete("bob", task.id).await.unwrap());
    assert_eq!(store.list("bob", &ListQuery::default()).await.unwrap().total, 0);
    assert_eq!(store.get("alice", task.id).await.unwrap(), Some(task.clone()));
    assert!(store.delete("alice", task.id).await.unwrap());
    assert!(!store.delete("alice", task.id).await.unwrap());
    store.ping().await.unwrap();
}

async fn patches_change_only_what_they_name(backend: Backend) {
    let (store, _db) = open(backend).await;
    let task = store.create("u", &new_task("t")).await.unwrap();
    let retitled = store
        .update("u", task.id, &TaskPatch { title: Some("t2".into()), ..TaskPatch::default() })
        .await
        .unwrap()
        .unwrap();
    assert_eq!((retitled.title.as_str(), retitled.description.as_deref()), ("t2", Some("d")));
    assert!(!retitled.completed);
    let cleared = store
        .update("u", task.id, &TaskPatch { description: Some(None), ..TaskPatch::default() })
        .await
        .unwrap()
        .unwrap();
    assert_eq!((cleared.title.as_str(), cleared.description), ("t2", None));
    let completed = store
        .update("u", task.id, &TaskPatch { completed: Some(true), ..TaskPatch::default() })
        .await
        .unwrap()
        .unwrap();
    assert!(completed.completed);
    assert_eq!(completed.created_at, task.created_at);
}

async fn updated_at_strictly_increases_even_within_a_clock_tick(backend: Backend) {
    let (store, _db) = open(backend).await;
    let task = store.create("u", &new_task("t")).await.unwrap();
    let mut last = task.updated_at;
    for _ in 0..50 {
        let toggled = store.toggle_completed("u", task.id).await.unwrap().unwrap();
        assert!(toggled.updated_at > last, "{} !> {last}", toggled.updated_at);
        last = toggled.updated_at;
    }
    // 50 toggles end where they started.
    assert!(!store.get("u", task.id).await.unwrap().unwrap().completed);
}

async fn listing_orders_ties_by_id_and_counts_before_paging(backend: Backend) {
    let (store, _db) = open(backend).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let task = NewTask { title: "same".into(), description: None, completed: i % 2 == 0 };
        ids.push(store.create("u", &task).await.unwrap().id);
    }
    let list = |query: ListQuery| {
        let store = store.clone();
        async move { store.list("u", &query).await.unwrap() }
    };
    let by_title = list(ListQuery { sort: SortKey::Title, ..ListQuery::default() }).await;
    assert_eq!(by_title.tasks.iter().map(|t| t.id).collect::<Vec<_>>(), ids, "ties by id");
    let desc =
        list(ListQuery { sort: SortKey::Title, order: SortOrder::Desc, ..ListQuery::default() })
            .await;
    let mut reversed = ids.clone();
    reversed.reverse();
    assert_eq!(desc.tasks.iter().map(|t| t.id).collect::<Vec<_>>(), reversed);
    let page = list(ListQuery { limit: Some(3), offset: 3, ..ListQuery::default() }).await;
    assert_eq!((page.tasks.len(), page.total), (3, 7));
    assert_eq!(page.tasks[0].id, ids[3]);
    let done = list(ListQuery { status: StatusFilter::Completed, ..ListQuery::default() }).await;
    assert_eq!((done.tasks.len(), done.total), (4, 4));
    let beyond =
        list(ListQuery { status: StatusFilter::Pending, offset: 100, ..ListQuery::default() })
            .await;
    assert_eq!((beyond.tasks.len(), beyond.total), (0, 3));
    let empty = store.list("nobody", &ListQuery { offset: 5, ..ListQuery::default() }).await;
    assert_eq!(empty.unwrap().total, 0);
}

async fn timestamps_round_trip_to_the_microsecond(backend: Backend) {
    let (store, _db) = open(backend).await;
    let created = store.create("u", &new_task("t")).await.unwrap();
    assert_eq!(created.created_at.timestamp_subsec_nanos() % 1000, 0, "microsecond precision");
    let fetched = store.get("u", created.id).await.unwrap().unwrap();
    assert_eq!(fetched, created);
    let listed = store.list("u", &ListQuery::default()).await.unwrap();
    assert_eq!(listed.tasks, vec![created]);
}
