//! The replica property of the change feed: while concurrent writers create, update, toggle and
//! delete (several users, both path styles; on PostgreSQL half of them through a second server
//! on the same database), a reader per user loops on `changes?since=` and applies what it gets
//! to a local copy. When the writers stop and the reader syncs once more, its copy equals
//! `GET /api/tasks` field for field, for every user.
//!
//! What it catches: a feed that skips a change for good. With a global sequence read as
//! "greater than the last one seen", a transaction that took a smaller number but committed
//! after a larger one is never seen by a reader that already moved past the larger one.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use client_sdk::{
    Client,
    types::{Change, Task, TaskCreate, TaskUpdate},
};
use integration_tests::{Backend, Options, TestServer, user};
use serde_json::Value;

const USERS: usize = 3;
const WRITERS: usize = 8;
const OPS_PER_WRITER: usize = 60;
const ROUNDS: usize = 8;

/// A small deterministic generator (xorshift), seeded per writer and round.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One of a user's clients: which server, which path style, and whether its writes carry an
/// `Idempotency-Key` (a transaction of several statements, as a retrying client's are).
#[derive(Clone)]
struct Writer {
    client: Client,
    user: String,
    user_path: bool,
    keyed: bool,
}

type Key = client_sdk::types::IdempotencyKey;

/// `builder` with a fresh key set by `set` when the writer sends keys.
fn keyed<B>(keyed: bool, builder: B, set: impl FnOnce(B, Key) -> B) -> B {
    if keyed { set(builder, uuid::Uuid::new_v4().to_string().parse().unwrap()) } else { builder }
}

impl Writer {
    async fn create(&self, title: String) -> Option<Task> {
        let body = TaskCreate::builder().title(title);
        let reply = if self.user_path {
            let request = self.client.create_user_task().user_id(&self.user);
            keyed(self.keyed, request, |r, k| r.idempotency_key(k)).body(body).send().await
        } else {
            let request = self.client.create_task();
            keyed(self.keyed, request, |r, k| r.idempotency_key(k)).body(body).send().await
        };
        Some(reply.expect("create").into_inner())
    }

    /// A write to `id`, which another writer may have deleted meanwhile (a 404 is fine).
    async fn write(&self, kind: u64, id: i64, n: usize) {
        let (client, user, k) = (&self.client, &self.user, self.keyed);
        let reply = match (kind, self.user_path) {
            (0, false) => {
                let request = client.toggle_task().id(id);
                keyed(k, request, |r, k| r.idempotency_key(k)).send().await.map(drop)
            }
            (0, true) => {
                let request = client.toggle_user_task().user_id(user).id(id);
                keyed(k, request, |r, k| r.idempotency_key(k)).send().await.map(drop)
            }
            (1, user_path) => {
                let title = format!("renamed {n}").parse().unwrap();
                let body = TaskUpdate::builder().title(Some(title));
                if user_path {
                    let request = client.update_user_task().user_id(user).id(id);
                    keyed(k, request, |r, k| r.idempotency_key(k)).body(body).send().await.map(drop)
                } else {
                    let request = client.update_task().id(id);
                    keyed(k, request, |r, k| r.idempotency_key(k)).body(body).send().await.map(drop)
                }
            }
            (_, false) => {
                let request = client.delete_task().id(id);
                keyed(k, request, |r, k| r.idempotency_key(k)).send().await.map(drop)
            }
            (_, true) => {
                let request = client.delete_user_task().user_id(user).id(id);
                keyed(k, request, |r, k| r.idempotency_key(k)).send().await.map(drop)
            }
        };
        match reply {
            Ok(()) => {}
            Err(err) if err.status().map(|s| s.as_u16()) == Some(404) => {}
            Err(err) => panic!("write {kind} to {id}: {err:?}"),
        }
    }
}

/// The user's copy, kept from the feed.
#[derive(Default)]
struct Replica {
    tasks: BTreeMap<i64, Value>,
    cursor: Option<String>,
    reads: usize,
}

impl Replica {
    /// Reads the feed until nothing more is waiting, applying every change.
    async fn sync(&mut self, client: &Client) {
        loop {
            let mut request = client.list_changes();
            if let Some(cursor) = &self.cursor {
                request = request.since(cursor);
            }
            let batch = request.send().await.expect("read the feed").into_inner();
            self.reads += 1;
            for change in batch.changes {
                match change {
                    Change::Upsert { task } => {
                        self.tasks.insert(task.id, serde_json::to_value(task).unwrap());
                    }
                    Change::Delete { id } => {
                        self.tasks.remove(&id);
                    }
                }
            }
            self.cursor = Some(batch.cursor);
            if !batch.more {
                return;
            }
        }
    }
}

async fn round(primary: &TestServer, secondary: &TestServer, round: usize) -> (usize, usize) {
    let users: Vec<String> = (0..USERS).map(|i| user(&format!("replica{round}-{i}"))).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicUsize::new(0));
    // Each user's known ids, shared by that user's writers (some deleted meanwhile).
    let known: Arc<Vec<tokio::sync::Mutex<Vec<i64>>>> =
        Arc::new((0..USERS).map(|_| tokio::sync::Mutex::new(Vec::new())).collect());
    let writers = (0..WRITERS).map(|w| {
        let server = if w % 2 == 0 { primary } else { secondary };
        let name = users[w % USERS].clone();
        let (user_path, keyed) = (w % 4 >= 2, w % 8 >= 4);
        let writer = Writer { client: server.client(&name), user: name, user_path, keyed };
        let (known, writes) = (known.clone(), writes.clone());
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((round * WRITERS + w) as u64 + 1));
        tokio::spawn(async move {
            for n in 0..OPS_PER_WRITER {
                let ids = known[w % USERS].lock().await.clone();
                if ids.is_empty() || rng.below(3) == 0 {
                    if let Some(task) = writer.create(format!("w{w} n{n}")).await {
                        known[w % USERS].lock().await.push(task.id);
                    }
                } else {
                    let id = ids[rng.below(ids.len() as u64) as usize];
                    writer.write(rng.below(4), id, n).await;
                }
                writes.fetch_add(1, Ordering::Relaxed);
            }
        })
    });
    let writers: Vec<_> = writers.collect();
    let readers: Vec<_> = users
        .iter()
        .map(|name| {
            let client = primary.client(name);
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut replica = Replica::default();
                while !stop.load(Ordering::Acquire) {
                    replica.sync(&client).await;
                }
                replica
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("a writer");
    }
    stop.store(true, Ordering::Release);
    let mut reads = 0;
    for (reader, name) in readers.into_iter().zip(&users) {
        let mut replica = reader.await.expect("a reader");
        let client = primary.client(name);
        replica.sync(&client).await;
        reads += replica.reads;
        let listed = client.list_tasks().send().await.unwrap().into_inner();
        let listed: BTreeMap<i64, Value> =
            listed.into_iter().map(|task| (task.id, serde_json::to_value(task).unwrap())).collect();
        assert_eq!(
            replica.tasks, listed,
            "round {round}: the copy kept from the feed is not the list for {name}"
        );
    }
    (writes.load(Ordering::Relaxed), reads)
}

async fn replicas_equal_the_list(backend: Backend) {
    let primary = TestServer::start(backend).await;
    // On PostgreSQL a second instance on the same database (PgBouncer: the same pooled URL);
    // SQLite's database belongs to one process, so there the second "instance" is the first.
    let secondary = match backend {
        Backend::Sqlite => None,
        Backend::Postgres | Backend::PgBouncer => Some(
            TestServer::start_on(
                &primary.database_url,
                Options { connect: backend.connect_options(), ..Options::default() },
            )
            .await,
        ),
    };
    let (mut writes, mut reads) = (0, 0);
    for n in 0..ROUNDS {
        let (w, r) = round(&primary, secondary.as_ref().unwrap_or(&primary), n).await;
        writes += w;
        reads += r;
    }
    println!(
        "{backend:?}: {ROUNDS} rounds, {writes} writes by {WRITERS} writers, {reads} feed reads; every copy equals the list"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_kept_from_the_feed_equal_the_list_on_sqlite() {
    replicas_equal_the_list(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_kept_from_the_feed_equal_the_list_on_postgres() {
    replicas_equal_the_list(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_kept_from_the_feed_equal_the_list_behind_pgbouncer() {
    replicas_equal_the_list(Backend::PgBouncer).await;
}
