//! Connections handed from one finished store call to the next without going back through
//! sqlx's pool, which pings every connection it gets back (sqlx 0.9's `return_to_pool`): one
//! more round trip, a spawned task and a wake-up of the database per call, on every request.
//!
//! sqlx's pool stays the owner of every connection (its size, its connects, its timeouts). A
//! [`Lease`] that its call [`finish`](Lease::finish)es cleanly goes to a short stack of warm
//! connections here instead of back to sqlx; one dropped anywhere else (an error, a cancelled
//! call, a write that rolls back) goes back to sqlx, which pings it or closes it as before, so a
//! connection that may be in the middle of a statement is never handed on. Requests queue for a
//! connection on this pool's own gate (as many places as sqlx's pool has connections), so that
//! warm connections are not left idle while callers wait in sqlx's queue; and while anyone does
//! wait on sqlx (a transaction, or a lease that found no warm connection), connections are given
//! back to sqlx rather than kept warm, so nobody waits for a connection that sits here.

use std::{
    ops::{Deref, DerefMut},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sqlx::{Database, Pool, Transaction, pool::PoolConnection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A warm connection unused for this long goes back to sqlx, whose idle timeout then closes it
/// (Neon's pooler and compute close idle connections anyway).
const MAX_IDLE: Duration = Duration::from_secs(30);

pub struct WarmPool<DB: Database> {
    pool: Pool<DB>,
    gate: Arc<Semaphore>,
    acquire_timeout: Duration,
    state: Mutex<State<DB>>,
}

struct State<DB: Database> {
    /// Most recently finished last.
    warm: Vec<(PoolConnection<DB>, Instant)>,
    /// Callers waiting on sqlx's pool right now.
    waiting_on_pool: usize,
}

impl<DB: Database> WarmPool<DB> {
    pub fn new(pool: Pool<DB>, max_connections: u32, acquire_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            pool,
            gate: Arc::new(Semaphore::new(max_connections as usize)),
            acquire_timeout,
            state: Mutex::new(State { warm: Vec::new(), waiting_on_pool: 0 }),
        })
    }

    /// A connection for one store call: a warm one if there is one, else one from sqlx.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease<DB>, sqlx::Error> {
        let permit = tokio::time::timeout(self.acquire_timeout, self.gate.clone().acquire_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let waiting = {
            let mut state = self.lock();
            let now = Instant::now();
            let stale = state.warm.iter().take_while(|(_, since)| now - *since > MAX_IDLE).count();
            let stale: Vec<_> = state.warm.drain(..stale).collect();
            match state.warm.pop() {
                Some((connection, _)) => {
                    drop(state);
                    drop(stale);
                    return Ok(Lease { connection: Some(connection), warm: self.clone(), permit });
                }
                None => {
                    drop(stale);
                    Waiting::register(self, &mut state)
                }
            }
        };
        // Boxed: sqlx's `acquire` is a future of ~4 KB, which every store call's future would
        // otherwise carry (and move) for this path that few calls take
        // (`docs/benchmarks.md`, issue 19 step 14).
        let connection = Box::pin(self.pool.acquire()).await;
        drop(waiting);
        Ok(Lease { connection: Some(connection?), warm: self.clone(), permit })
    }

    /// A transaction, straight from sqlx's pool (it goes back there when it ends).
    pub async fn begin(self: &Arc<Self>) -> Result<Transaction<'static, DB>, sqlx::Error> {
        let (waiting, handed_back) = {
            let mut state = self.lock();
            // Every connection may be warm here: give one back to sqlx for this transaction.
            let handed_back = state.warm.pop();
            (Waiting::register(self, &mut state), handed_back)
        };
        drop(handed_back);
        let pool = self.pool.clone();
        let transaction = begin_whole(async move { pool.begin().await }).await;
        drop(waiting);
        transaction
    }

    /// Connections open, and how many of them are idle (warm here, or idle in sqlx's pool).
    pub fn status(&self) -> (u32, usize) {
        let warm = self.lock().warm.len();
        (self.pool.size(), self.pool.num_idle() + warm)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<DB>> {
        // The state stays consistent at every step, so a panic elsewhere cannot poison it
        // in a way that matters.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn put_back(&self, connection: PoolConnection<DB>) {
        let mut state = self.lock();
        if state.waiting_on_pool == 0 && !self.pool.is_closed() {
            state.warm.push((connection, Instant::now()));
        } else {
            drop(state);
            drop(connection);
        }
    }
}

/// Runs sqlx's `begin` to its end in a task of its own, whatever happens to the caller.
///
/// sqlx 0.9's `begin` is not cancel-safe. Dropped on PostgreSQL after its `BEGIN` went out and
/// before the answer, it leaves the connection inside a transaction that sqlx counts as closed
/// (its guard rolls back only transactions it has counted); dropped on either database after
/// the answer came and before it was taken, it leaves a transaction that no `Transaction`
/// owns. Either way the connection goes back to the pool still in it, and every later call on
/// it runs inside that transaction: answered, never committed, holding its locks. A request's
/// future is dropped wherever it is when its client goes away, or its deadline passes. Here a
/// transaction nobody waits for any more is dropped whole in the task, which rolls it back.
///
/// Not an `async fn`: `begin` goes to its task at once, where as an argument of one it would
/// stay in the caller's future too.
pub fn begin_whole<DB: Database>(
    begin: impl Future<Output = Result<Transaction<'static, DB>, sqlx::Error>> + Send + 'static,
) -> impl Future<Output = Result<Transaction<'static, DB>, sqlx::Error>> {
    let task = tokio::spawn(begin);
    async move {
        task.await.unwrap_or_else(|failed| Err(sqlx::Error::Io(std::io::Error::other(failed))))
    }
}

/// Counts a caller as waiting on sqlx's pool until dropped (also when its call is cancelled).
struct Waiting<DB: Database>(Arc<WarmPool<DB>>);

impl<DB: Database> Waiting<DB> {
    fn register(warm: &Arc<WarmPool<DB>>, state: &mut State<DB>) -> Self {
        state.waiting_on_pool += 1;
        Self(warm.clone())
    }
}

impl<DB: Database> Drop for Waiting<DB> {
    fn drop(&mut self) {
        self.0.lock().waiting_on_pool -= 1;
    }
}

/// One store call's connection. Dropped, it goes back to sqlx's pool; [`finish`](Self::finish)ed
/// after a call that completed, it stays warm for the next call.
pub struct Lease<DB: Database> {
    connection: Option<PoolConnection<DB>>,
    warm: Arc<WarmPool<DB>>,
    /// Released after the connection is put back, so the next caller finds it.
    #[allow(dead_code)]
    permit: OwnedSemaphorePermit,
}

impl<DB: Database> Lease<DB> {
    /// The call on this connection ran to its end (every statement answered): hand it on.
    pub fn finish(mut self) {
        if let Some(connection) = self.connection.take() {
            self.warm.put_back(connection);
        }
    }
}

impl<DB: Database> Deref for Lease<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        self.connection.as_ref().expect("a lease holds its connection until it ends")
    }
}

impl<DB: Database> DerefMut for Lease<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        self.connection.as_mut().expect("a lease holds its connection until it ends")
    }
}
