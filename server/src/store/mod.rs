//! Persistence: the domain types and the one storage trait, with a PostgreSQL and a SQLite
//! implementation. Nothing here knows about HTTP; every method is scoped by owner in SQL, so a
//! task that belongs to someone else is indistinguishable from one that does not exist.

mod deadline;
mod postgres;
mod sqlite;
mod warm;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Datelike as _, Utc};
use sqlx::{Arguments as _, IntoArguments, QueryBuilder};

use deadline::Deadline;
use postgres::PostgresStore;
pub use postgres::listen_for_changes;
use sqlite::SqliteStore;

/// Whether both databases can hold `time`: the years 1 to 9999 (RFC 3339's range; PostgreSQL's
/// `timestamptz` and SQLite's microseconds hold more). A time from a client outside it (in a
/// forged `If-Match` or cursor) is never one this service wrote, and PostgreSQL would refuse it
/// with an error rather than a non-match.
pub fn storable(time: &DateTime<Utc>) -> bool {
    (1..=9999).contains(&time.year())
}

/// A task as stored. Its owner is not part of it: every read and write names the owner, so the
/// statements do not select it and no row decodes it again (a page of 20 tasks read the same
/// user id 20 times, each into a new `String`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub id: i64,
    pub title: String,
    pub description: Option<String>,
    pub completed: bool,
    pub priority: Priority,
    pub due_at: Option<DateTime<Utc>>,
    /// Lower case, unique, in the order first given.
    pub tags: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The columns of a [`Task`], in the order of its fields (tags as JSON text on SQLite, `jsonb` on
/// PostgreSQL); a macro, so that statements stay `&'static str` built by `concat!`. PostgreSQL's
/// rows are decoded by position in this order (`postgres::decode_task`).
macro_rules! task_columns {
    () => {
        "id, title, description, completed, priority, due_at, tags, created_at, updated_at"
    };
}
use task_columns;
const TASK_COLUMNS: &str = task_columns!();
/// [`TASK_COLUMNS`] one by one, for decoding by position (a unit test keeps the two equal).
const TASK_COLUMN_NAMES: [&str; 9] = [
    "id",
    "title",
    "description",
    "completed",
    "priority",
    "due_at",
    "tags",
    "created_at",
    "updated_at",
];

/// How urgent a task is, from low to urgent; stored as its rank (0 to 3), so that sorting by
/// priority is sorting by a number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Low,
    #[default]
    Medium,
    High,
    Urgent,
}

impl Priority {
    pub const ALL: [Priority; 4] =
        [Priority::Low, Priority::Medium, Priority::High, Priority::Urgent];

    pub fn rank(self) -> i16 {
        self as i16
    }

    pub fn name(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Medium => "medium",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        }
    }

    /// A priority by name, in any case (`"High"`).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|priority| priority.name().eq_ignore_ascii_case(name))
    }
}

impl TryFrom<i16> for Priority {
    type Error = String;

    fn try_from(rank: i16) -> Result<Self, String> {
        usize::try_from(rank)
            .ok()
            .and_then(|rank| Self::ALL.get(rank).copied())
            .ok_or_else(|| format!("no priority has rank {rank}"))
    }
}

/// A validated task to create.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewTask {
    pub title: String,
    pub description: Option<String>,
    pub completed: bool,
    pub priority: Priority,
    pub due_at: Option<DateTime<Utc>>,
    pub tags: Vec<String>,
}

/// A validated partial update: `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskPatch {
    pub title: Option<String>,
    /// `Some(None)` clears the description.
    pub description: Option<Option<String>>,
    pub completed: Option<bool>,
    pub priority: Option<Priority>,
    /// `Some(None)` clears the due date.
    pub due_at: Option<Option<DateTime<Utc>>>,
    /// Replaces the whole set.
    pub tags: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StatusFilter {
    #[default]
    All,
    Pending,
    Completed,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortKey {
    #[default]
    Created,
    Updated,
    Title,
    /// Tasks without a due date last, in either order.
    DueDate,
    /// By rank: ascending is low first.
    Priority,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortOrder {
    #[default]
    Asc,
    Desc,
}

/// `If-Match` as the store sees it: write only if the task's `updated_at` is one of these.
/// `None` writes unconditionally. The check and the write are one statement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Precondition(pub Option<Vec<DateTime<Utc>>>);

/// The outcome of a write to one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written<T> {
    Done(T),
    /// No such task for this owner.
    Missing,
    /// The task exists, but the precondition did not hold: nothing was changed.
    PreconditionFailed,
}

/// Which of an owner's tasks a listing holds; every condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub status: StatusFilter,
    /// A substring of the title or the description, in any letter case.
    pub search: Option<String>,
    /// Any of these priorities; empty: any priority.
    pub priorities: Vec<Priority>,
    /// Carrying every one of these tags.
    pub tags: Vec<String>,
    /// Due at or after this time.
    pub due_after: Option<DateTime<Utc>>,
    /// Due before this time.
    pub due_before: Option<DateTime<Utc>>,
    /// Not completed and due before this time (`overdue=true`: now).
    pub overdue_at: Option<DateTime<Utc>>,
}

impl Filter {
    /// Only `status`: the stored counts answer the total.
    fn is_status_only(&self) -> bool {
        *self == Filter { status: self.status, ..Filter::default() }
    }

    /// Only one tag, nothing else: `task_tags` alone counts it (one row per live task and tag).
    fn only_tag(&self) -> Option<&str> {
        let [tag] = self.tags.as_slice() else { return None };
        (*self == Filter { tags: vec![tag.clone()], ..Filter::default() }).then_some(tag)
    }
}

/// Which of an owner's tasks to list, in which order. Ties are broken by id, so pages are stable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub filter: Filter,
    pub sort: SortKey,
    pub order: SortOrder,
    pub limit: Option<i64>,
    pub offset: i64,
    /// Only the tasks that come after this position in the listing's order (keyset paging:
    /// a page costs the same wherever it starts, unlike `offset`, which walks what it skips).
    pub after: Option<Cursor>,
}

/// A position in a listing: the sort value and id of the last task of a page. Its `value`
/// matches the listing's sort key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub value: SortValue,
    pub id: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortValue {
    /// `Created`, `Updated`.
    Time(DateTime<Utc>),
    Title(String),
    DueDate(Option<DateTime<Utc>>),
    /// A [`Priority::rank`].
    Priority(i16),
}

impl Cursor {
    /// Where `task` stands in a listing sorted by `sort`.
    pub fn at(task: &Task, sort: SortKey) -> Self {
        let value = match sort {
            SortKey::Created => SortValue::Time(task.created_at),
            SortKey::Updated => SortValue::Time(task.updated_at),
            SortKey::Title => SortValue::Title(task.title.clone()),
            SortKey::DueDate => SortValue::DueDate(task.due_at),
            SortKey::Priority => SortValue::Priority(task.priority.rank()),
        };
        Self { value, id: task.id }
    }
}

/// One page of a listing and the number of tasks that matched before paging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub tasks: Vec<Task>,
    pub total: i64,
    /// Where the next page starts, when a `limit` left tasks after this page.
    pub next: Option<Cursor>,
    /// A listing without `limit` of more than [`WHOLE_LIST_MAX`] tasks comes back as the ids of
    /// every matching task, in order (`tasks` is empty), to be read in chunks with
    /// [`TaskStore::tasks_by_id`]: memory stays bounded however long the list.
    pub ids: Option<Vec<i64>>,
}

/// The most tasks a listing without `limit` returns in one piece; a longer one comes as ids.
pub const WHOLE_LIST_MAX: i64 = 500;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached in time; worth retrying later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// An idempotency key turned out to be taken when its response was to be kept: another
    /// request with it committed first (its writes are rolled back; retrying replays the other).
    #[error("the idempotency key was taken by a concurrent request")]
    KeyTaken,
    /// The owner holds `max_tasks_per_user` tasks already: nothing was created.
    #[error("task limit reached")]
    TaskLimitReached,
    /// Anything else: a bug or a broken invariant.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        if is_transient(&err) {
            StoreError::Unavailable(err.to_string())
        } else {
            StoreError::Internal(err.into())
        }
    }
}

/// Errors that mean "the database is not reachable or not ready": a 503, and worth a retry at
/// start-up. PostgreSQL classes 08 (connection) and 57P (shutting down, starting up); SQLite's
/// BUSY (5) and LOCKED (6) with every extended code of theirs (`SQLITE_BUSY_SNAPSHOT` is 517:
/// the primary code is the low byte).
fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some(code) if code.starts_with("57P") || code.starts_with("08") => true,
            Some(code) if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() => {
                code.parse::<i32>().is_ok_and(|code| matches!(code & 0xff, 5 | 6))
            }
            _ => false,
        },
        _ => false,
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The one storage interface. `owner` is always the authenticated subject.
#[async_trait]
pub trait TaskStore: Send + Sync + 'static {
    async fn list(&self, owner: &str, query: &ListQuery) -> StoreResult<Page>;
    async fn get(&self, owner: &str, id: i64) -> StoreResult<Option<Task>>;
    /// Those of `ids` that are the owner's and still match `filter`, in any order.
    async fn tasks_by_id(
        &self,
        owner: &str,
        ids: &[i64],
        filter: &Filter,
    ) -> StoreResult<Vec<Task>>;
    /// The owner's change log after the version `since`, in commit order, at most `limit`
    /// changes, each task once in its latest state. Without `since`: every live task (a full
    /// sync needs no deletions). [`Feed::Gone`] when `since` can no longer be served: a deletion
    /// after it has been purged, or it is ahead of the owner's version (a restored database).
    async fn changes(&self, owner: &str, since: Option<i64>, limit: i64) -> StoreResult<Feed>;
    /// The current version of each of `owners` that has ever written (the others are left
    /// out), in any order: how a live stream learns that its owner's log has moved.
    async fn versions(&self, owners: &[String]) -> StoreResult<Vec<(String, i64)>>;
    /// Tells every instance listening that `owners`' logs have moved (PostgreSQL: one
    /// `NOTIFY` each, outside any write: see `crate::events`).
    async fn announce(&self, owners: &[String]) -> StoreResult<()>;
    /// Writes as `owner`, on one connection; committed by [`Writes::commit`], rolled back when
    /// dropped.
    async fn writes(&self, owner: &str) -> StoreResult<Box<dyn Writes>>;
    /// Writes as `owner` under an idempotency key, in one transaction that holds the key: the
    /// first request with it gets the writes; a repeat of the same request its kept response.
    async fn claim(&self, owner: &str, key: &IdempotencyKey) -> StoreResult<Claim>;
    /// One bounded batch of upkeep: tombstones older than their retention and expired
    /// idempotency keys are deleted, at most [`PURGE_BATCH`] of each, and (PostgreSQL) the
    /// change log's superseded entries of at most [`COMPACT_BATCH`] owners.
    async fn purge(&self) -> StoreResult<Purged>;
    /// A `SELECT 1` round trip.
    async fn ping(&self) -> StoreResult<()>;
    /// The connection pool right now, for `/metrics`.
    fn pool_status(&self) -> PoolStatus;

    /// One write, committed on its own: [`TaskStore::writes`] for a single call.
    async fn create(&self, owner: &str, task: &NewTask) -> StoreResult<Task> {
        let mut writes = self.writes(owner).await?;
        let task = writes.create(task).await?;
        writes.commit(None).await?;
        Ok(task)
    }

    async fn update(
        &self,
        owner: &str,
        id: i64,
        patch: &TaskPatch,
        precondition: &Precondition,
    ) -> StoreResult<Written<Task>> {
        let mut writes = self.writes(owner).await?;
        let outcome = writes.update(id, patch, precondition).await?;
        writes.commit(None).await?;
        Ok(outcome)
    }

    async fn toggle_completed(
        &self,
        owner: &str,
        id: i64,
        precondition: &Precondition,
    ) -> StoreResult<Written<Task>> {
        let mut writes = self.writes(owner).await?;
        let outcome = writes.toggle_completed(id, precondition).await?;
        writes.commit(None).await?;
        Ok(outcome)
    }

    async fn delete(
        &self,
        owner: &str,
        id: i64,
        precondition: &Precondition,
    ) -> StoreResult<Written<()>> {
        let mut writes = self.writes(owner).await?;
        let outcome = writes.delete(id, precondition).await?;
        writes.commit(None).await?;
        Ok(outcome)
    }
}

/// The writes one request makes as one owner, on one connection: each statement commits on its
/// own, or (under an idempotency key, and behind a pooler without prepared statements) all of
/// them in one transaction that [`commit`](Writes::commit) ends.
#[async_trait]
pub trait Writes: Send {
    /// Creates the task unless the owner holds `max_tasks_per_user` already
    /// ([`StoreError::TaskLimitReached`]); the count and the insert are one atomic step.
    async fn create(&mut self, task: &NewTask) -> StoreResult<Task>;
    /// Applies `patch` in one statement; `updated_at` strictly moves forward.
    async fn update(
        &mut self,
        id: i64,
        patch: &TaskPatch,
        precondition: &Precondition,
    ) -> StoreResult<Written<Task>>;
    /// Flips `completed` in one statement, so concurrent toggles never lose one.
    async fn toggle_completed(
        &mut self,
        id: i64,
        precondition: &Precondition,
    ) -> StoreResult<Written<Task>>;
    async fn delete(&mut self, id: i64, precondition: &Precondition) -> StoreResult<Written<()>>;
    /// Makes the writes permanent. Under an idempotency key, `kept` (the response as the caller
    /// sent it; opaque here) is stored with the key first, in the same transaction, for
    /// `Retention::idempotency_keys`; without a key it must be `None`.
    async fn commit(self: Box<Self>, kept: Option<&[u8]>) -> StoreResult<()>;
}

/// An `Idempotency-Key`, per owner, and the fingerprint of the request that uses it (what "the
/// same request" means is the caller's business; here it is bytes to compare).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    pub fingerprint: Vec<u8>,
}

/// What an idempotency key says about a request.
pub enum Claim {
    /// The key is new (or expired): the request runs through these writes, which hold the key
    /// until they are committed (with the response to keep) or dropped.
    First(Box<dyn Writes>),
    /// The same request ran before under this key: the response it got.
    Replay(Vec<u8>),
    /// The key was used for a different request.
    Mismatch,
    /// A request with this key is running right now.
    InFlight,
}

/// An answer of the change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feed {
    Changes(ChangeBatch),
    /// `since` cannot be served any more: the client must start over without it.
    Gone,
}

/// What PostgreSQL's change notifications say (see [`listen_for_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// This owner's change log has moved.
    Changed(String),
    /// The listener is (again) in place: anything may have changed while it was away.
    Reconnected,
}

/// Changes in commit order, and where the next read resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeBatch {
    pub changes: Vec<Change>,
    /// The version each change was logged at, in step with `changes`: resuming after change
    /// `i` is resuming from `versions[i]`.
    pub versions: Vec<i64>,
    /// The version right after the last change returned (the owner's version at the read, when
    /// nothing more is waiting).
    pub cursor: i64,
    /// More changes were waiting beyond `limit`.
    pub more: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Upsert(Task),
    Delete { id: i64 },
}

/// How long tombstones and idempotency keys are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// `TOMBSTONE_RETENTION_SECS`: how long a deletion can still be learned from the feed.
    pub tombstones: Duration,
    /// `IDEMPOTENCY_TTL_SECS`: how long a key's response is kept.
    pub idempotency_keys: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            tombstones: Duration::from_secs(30 * 24 * 60 * 60),
            idempotency_keys: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// Rows one [`TaskStore::purge`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub tombstones: u64,
    pub idempotency_keys: u64,
    /// Owners whose superseded change-log entries were deleted.
    pub compacted_owners: u64,
}

impl Purged {
    /// Whether a batch came back full: there may be more to do at once.
    pub fn was_full(&self) -> bool {
        self.tombstones >= PURGE_BATCH as u64
            || self.idempotency_keys >= PURGE_BATCH as u64
            || self.compacted_owners >= COMPACT_BATCH as u64
    }
}

/// The most rows of each kind one purge deletes: short statements, short locks.
pub const PURGE_BATCH: i64 = 1000;
/// The most owners whose change log one purge compacts (each reads about twice the entries it
/// deletes, at most about twice the owner's tasks).
pub const COMPACT_BATCH: i64 = 8;

/// Connections the pool holds, and how many of them are idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    pub size: u32,
    pub idle: usize,
}

/// Connection settings shared by both databases.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// How long a request may wait for a pooled connection before it gets a 503.
    pub acquire_timeout: Duration,
    /// The longest any one store call may take, connection wait included.
    pub call_timeout: Duration,
    /// How long start-up keeps retrying an unreachable database (Neon waking from zero).
    pub startup_deadline: Duration,
    /// The pool's size (`DATABASE_MAX_CONNECTIONS`): the most transactions one instance has in
    /// flight, however many requests wait.
    pub max_connections: u32,
    /// Prepared statements cached per PostgreSQL connection; 0 for poolers without support.
    pub statement_cache_capacity: usize,
    pub retention: Retention,
    /// `MAX_TASKS_PER_USER`: one more create is refused.
    pub max_tasks_per_user: i64,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            acquire_timeout: Duration::from_millis(1500),
            call_timeout: Duration::from_millis(1800),
            startup_deadline: Duration::from_secs(10),
            max_connections: 10,
            statement_cache_capacity: 100,
            retention: Retention::default(),
            max_tasks_per_user: 10_000,
        }
    }
}

/// Opens the database named by `url` (`postgres://…` or `sqlite://…`), applies the embedded
/// migrations, and returns the store with every call bounded by `call_timeout`.
pub async fn connect(url: &str, options: &ConnectOptions) -> anyhow::Result<Arc<dyn TaskStore>> {
    let store: Arc<dyn TaskStore> =
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Arc::new(PostgresStore::connect(url, options).await?)
        } else if url.starts_with("sqlite:") {
            Arc::new(SqliteStore::connect(url, options).await?)
        } else {
            anyhow::bail!("DATABASE_URL must start with postgres://, postgresql:// or sqlite:")
        };
    Ok(Arc::new(Deadline::new(store, options.call_timeout)))
}

/// Turns the row a conditional write returned (if any) into its outcome. Only when a
/// precondition was given and no row came back is a second look needed, to tell a missing task
/// from a failed precondition.
async fn written<T, F>(
    row: Option<T>,
    precondition: &Precondition,
    exists: impl FnOnce() -> F,
) -> StoreResult<Written<T>>
where
    F: std::future::Future<Output = StoreResult<bool>>,
{
    Ok(match row {
        Some(row) => Written::Done(row),
        None if precondition.0.is_some() && exists().await? => Written::PreconditionFailed,
        None => Written::Missing,
    })
}

/// What a key's kept row, if there is one, says about a request under it: `None` when the
/// request is the key's first.
fn kept_claim(kept: Option<(Vec<u8>, Vec<u8>)>, key: &IdempotencyKey) -> Option<Claim> {
    let (fingerprint, response) = kept?;
    Some(if fingerprint == key.fingerprint { Claim::Replay(response) } else { Claim::Mismatch })
}

/// The connection one request's writes run on: a pooled one (each statement commits on its
/// own), or a transaction on one.
enum Connection<DB: sqlx::Database> {
    Pooled(sqlx::pool::PoolConnection<DB>),
    /// Kept warm for the next call when the writes commit (PostgreSQL, see [`warm`]).
    Warm(warm::Lease<DB>),
    Transaction(sqlx::Transaction<'static, DB>),
}

impl<DB: sqlx::Database> Connection<DB> {
    fn get(&mut self) -> &mut DB::Connection {
        match self {
            Connection::Pooled(connection) => connection,
            Connection::Warm(connection) => connection,
            Connection::Transaction(transaction) => transaction,
        }
    }
}

/// One row of a change-log read: the owner's version and purge watermark (on every row, and on
/// the single row that comes back when nothing changed), and a change if there is one: a task,
/// or a tombstone (whose `title` is NULL: a task always has one).
#[derive(sqlx::FromRow)]
struct FeedRow<T> {
    current: i64,
    purged: i64,
    version: Option<i64>,
    id: Option<i64>,
    title: Option<String>,
    description: Option<String>,
    completed: Option<bool>,
    priority: Option<i16>,
    due_at: Option<T>,
    tags: Option<sqlx::types::Json<Vec<String>>>,
    created_at: Option<T>,
    updated_at: Option<T>,
}

/// The feed from the rows of a read that asked for `limit + 1` changes; `time` converts the
/// database's timestamps.
fn assemble_feed<T>(
    since: Option<i64>,
    limit: i64,
    rows: Vec<FeedRow<T>>,
    time: impl Fn(T) -> StoreResult<DateTime<Utc>>,
) -> StoreResult<Feed> {
    let (current, purged) = rows.first().map_or((0, 0), |row| (row.current, row.purged));
    if since.is_some_and(|since| since < purged || since > current) {
        return Ok(Feed::Gone);
    }
    let mut changes = Vec::with_capacity(rows.len());
    let mut versions = Vec::with_capacity(rows.len());
    for row in rows {
        let (Some(version), Some(id)) = (row.version, row.id) else { continue };
        let change = match (row.title, row.completed, row.priority, row.created_at, row.updated_at)
        {
            (Some(title), Some(completed), Some(priority), Some(created_at), Some(updated_at)) => {
                Change::Upsert(Task {
                    id,
                    title,
                    description: row.description,
                    completed,
                    priority: Priority::try_from(priority).map_err(anyhow::Error::msg)?,
                    due_at: row.due_at.map(&time).transpose()?,
                    tags: row.tags.map(|tags| tags.0).unwrap_or_default(),
                    created_at: time(created_at)?,
                    updated_at: time(updated_at)?,
                })
            }
            _ => Change::Delete { id },
        };
        changes.push(change);
        versions.push(version);
    }
    let more = changes.len() as i64 > limit;
    let cursor = if more {
        changes.truncate(limit as usize);
        versions.truncate(limit as usize);
        versions[changes.len() - 1]
    } else {
        current
    };
    Ok(Feed::Changes(ChangeBatch { changes, versions, cursor, more }))
}

/// How long one connection attempt may take at start-up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Start-up: opens one connection, retrying with exponential backoff while the database is not
/// reachable yet (a Neon compute waking from zero) until `deadline`. A direct connection rather
/// than a pool checkout, so that a final failure names the real cause (refused, DNS, TLS, auth).
async fn wait_until_reachable<C: sqlx::Connection>(
    options: &C::Options,
    deadline: Duration,
) -> Result<(), sqlx::Error> {
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        let attempt = match tokio::time::timeout(CONNECT_TIMEOUT, C::connect_with(options)).await {
            Ok(Ok(connection)) => return connection.close().await,
            Ok(Err(err)) => err,
            Err(_) => sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connecting timed out",
            )),
        };
        if started.elapsed() + delay >= deadline || !is_transient(&attempt) {
            return Err(attempt);
        }
        tracing::warn!(error = %attempt, retry_in_ms = delay.as_millis() as u64, "database not reachable yet");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

impl ListQuery {
    /// Whether this asks for a part of the list (`limit`, `offset` or `after`): only then does
    /// the total need counting apart from the rows.
    fn is_paged(&self) -> bool {
        self.limit.is_some() || self.offset > 0 || self.after.is_some()
    }

    /// Rows to fetch: one more than `limit` (or than [`WHOLE_LIST_MAX`] without one), to learn
    /// whether more follow.
    fn fetch_limit(&self) -> i64 {
        self.limit.unwrap_or(WHOLE_LIST_MAX) + 1
    }
}

/// The page a listing's rows make (`count` answers a paged listing's total when no row came
/// back, `ids` a long listing without `limit`).
async fn into_page<C, I>(
    query: &ListQuery,
    mut tasks: Vec<Task>,
    first_total: Option<i64>,
    count: impl FnOnce() -> C,
    ids: impl FnOnce() -> I,
) -> StoreResult<Page>
where
    C: std::future::Future<Output = StoreResult<i64>>,
    I: std::future::Future<Output = StoreResult<Vec<i64>>>,
{
    if !query.is_paged() {
        if tasks.len() as i64 <= WHOLE_LIST_MAX {
            return Ok(Page { total: tasks.len() as i64, tasks, next: None, ids: None });
        }
        let ids = ids().await?;
        return Ok(Page { tasks: Vec::new(), total: ids.len() as i64, next: None, ids: Some(ids) });
    }
    // Each row carries the total; a page past the end (by `offset` or `after`) has no row, and
    // so `count` is asked.
    let total = match first_total {
        Some(total) => total,
        None if query.offset > 0 || query.after.is_some() => count().await?,
        None => 0,
    };
    let next = split_page(query, &mut tasks);
    Ok(Page { tasks, total, next, ids: None })
}

/// What the two SQL dialects spell or bind differently when a listing is built; everything
/// else about a listing's statement is written once, here.
trait Dialect: sqlx::Database + Sized
where
    Self::Arguments: Default,
{
    /// ` AND ` the title or the description contains `search`, in any letter case.
    fn push_search(sql: &mut QueryBuilder<Self>, search: &str);
    /// The condition that keeps a listing (`counting`: its filtered count) to `owner`'s tasks.
    /// How it is written steers the planner: `user_id = owner` lets it walk the owner's indexes;
    /// the dialects write it otherwise where the rows a search or tag index finds are the
    /// cheaper start.
    fn push_owner(sql: &mut QueryBuilder<Self>, owner: &str, _filter: &Filter, _counting: bool) {
        sql.push("user_id = ");
        Self::bind_text(sql, owner);
    }
    /// ` AND ` the task carries `tag` (one of `filter`'s; `counting`: in its filtered count).
    fn push_tag(
        sql: &mut QueryBuilder<Self>,
        owner: &str,
        tag: &str,
        filter: &Filter,
        counting: bool,
    );
    /// What a statement filtered by `filter` needs before its `SELECT` (a `WITH …` of rows
    /// that both its count and its page read).
    fn push_with(_sql: &mut QueryBuilder<Self>, _filter: &Filter) {}
    fn bind_text(sql: &mut QueryBuilder<Self>, value: &str);
    fn bind_int(sql: &mut QueryBuilder<Self>, value: i64);
    fn bind_time(sql: &mut QueryBuilder<Self>, value: DateTime<Utc>);
}

/// Room for a listing's text and its arguments from the start: built from nothing, the text grew
/// five times and the arguments' buffer three, each growth a copy (issue 19's allocation count).
const STATEMENT_BYTES: usize = 512;
const ARGUMENTS: usize = 4;
const ARGUMENT_BYTES: usize = 64;

/// A statement filtered by `filter`, up to its `SELECT `.
fn select<DB: Dialect>(filter: &Filter) -> QueryBuilder<DB>
where
    DB::Arguments: Default + IntoArguments<DB>,
{
    let mut arguments = DB::Arguments::default();
    arguments.reserve(ARGUMENTS, ARGUMENT_BYTES);
    let mut sql = QueryBuilder::with_arguments(String::with_capacity(STATEMENT_BYTES), arguments);
    DB::push_with(&mut sql, filter);
    sql.push("SELECT ");
    sql
}

/// The full listing statement: the owner's tasks matching the filter, after the cursor, in
/// order, one row past `limit`, each row with the total.
fn list_statement<DB: Dialect>(owner: &str, query: &ListQuery) -> QueryBuilder<DB>
where
    DB::Arguments: Default + IntoArguments<DB>,
{
    let mut sql = select(&query.filter);
    sql.push(TASK_COLUMNS).push(", ");
    if query.is_paged() {
        push_count(&mut sql, owner, &query.filter);
    } else {
        // A whole list's total is its length.
        sql.push("CAST(0 AS BIGINT)");
    }
    sql.push(" AS total FROM tasks WHERE ");
    DB::push_owner(&mut sql, owner, &query.filter, false);
    push_filter(&mut sql, owner, &query.filter, false);
    if let Some(after) = &query.after {
        push_after(&mut sql, query.sort, query.order, after);
    }
    sql.push(order_by(query.sort, query.order));
    sql.push(" LIMIT ");
    DB::bind_int(&mut sql, query.fetch_limit());
    if query.offset > 0 {
        sql.push(" OFFSET ");
        DB::bind_int(&mut sql, query.offset);
    }
    sql
}

/// `SELECT id` of every task of the owner's listing, in its order (not paged).
fn ids_statement<DB: Dialect>(owner: &str, query: &ListQuery) -> QueryBuilder<DB>
where
    DB::Arguments: Default + IntoArguments<DB>,
{
    let mut sql = select(&query.filter);
    sql.push("id FROM tasks WHERE user_id = ");
    DB::bind_text(&mut sql, owner);
    push_filter(&mut sql, owner, &query.filter, false);
    sql.push(order_by(query.sort, query.order));
    sql
}

/// The owner's tasks among `ids` that match `filter`, `ids` bound by the caller after the
/// statement's end (`… AND id IN (` or `= ANY(`).
fn by_id_statement<DB: Dialect>(owner: &str, filter: &Filter) -> QueryBuilder<DB>
where
    DB::Arguments: Default + IntoArguments<DB>,
{
    let mut sql = select(filter);
    sql.push(TASK_COLUMNS).push(" FROM tasks WHERE user_id = ");
    DB::bind_text(&mut sql, owner);
    push_filter(&mut sql, owner, filter, false);
    sql
}

/// `SELECT` the owner's number of tasks matching `filter`.
fn count_statement<DB: Dialect>(owner: &str, filter: &Filter) -> QueryBuilder<DB>
where
    DB::Arguments: Default + IntoArguments<DB>,
{
    let mut sql = select(filter);
    push_count(&mut sql, owner, filter);
    sql
}

/// The owner's number of tasks matching `filter`. A status alone is answered by `task_counts`
/// (kept by triggers with every write, see the migrations; 0 for an owner with no row there
/// yet); any other filter counts the matching rows through the same indexes as the listing,
/// at most `MAX_TASKS_PER_USER` of them.
fn push_count<DB: Dialect>(sql: &mut QueryBuilder<DB>, owner: &str, filter: &Filter)
where
    DB::Arguments: Default + IntoArguments<DB>,
{
    if filter.is_status_only() {
        let count = match filter.status {
            StatusFilter::All => "total",
            StatusFilter::Pending => "total - completed",
            StatusFilter::Completed => "completed",
        };
        sql.push("COALESCE((SELECT ").push(count).push(" FROM task_counts WHERE user_id = ");
        DB::bind_text(sql, owner);
        sql.push("), 0)");
    } else if let Some(tag) = filter.only_tag() {
        sql.push("(SELECT count(*) FROM task_tags WHERE user_id = ");
        DB::bind_text(sql, owner);
        sql.push(" AND tag = ");
        DB::bind_text(sql, tag);
        sql.push(")");
    } else {
        sql.push("(SELECT count(*) FROM tasks WHERE ");
        DB::push_owner(sql, owner, filter, true);
        push_filter(sql, owner, filter, true);
        sql.push(")");
    }
}

/// The filter's conditions, each ` AND …`, after `WHERE user_id = owner` (`counting`: in the
/// filtered count's subquery).
fn push_filter<DB: Dialect>(
    sql: &mut QueryBuilder<DB>,
    owner: &str,
    filter: &Filter,
    counting: bool,
) where
    DB::Arguments: Default + IntoArguments<DB>,
{
    sql.push(match filter.status {
        StatusFilter::All => "",
        StatusFilter::Pending => " AND NOT completed",
        StatusFilter::Completed => " AND completed",
    });
    if let Some(search) = &filter.search {
        DB::push_search(sql, search);
    }
    if !filter.priorities.is_empty() {
        sql.push(" AND priority IN (");
        for (index, priority) in filter.priorities.iter().enumerate() {
            sql.push(if index == 0 { "" } else { ", " });
            DB::bind_int(sql, priority.rank().into());
        }
        sql.push(")");
    }
    for tag in &filter.tags {
        DB::push_tag(sql, owner, tag, filter, counting);
    }
    if let Some(at) = filter.due_after {
        sql.push(" AND due_at >= ");
        DB::bind_time(sql, at);
    }
    if let Some(at) = filter.due_before {
        sql.push(" AND due_at < ");
        DB::bind_time(sql, at);
    }
    if let Some(at) = filter.overdue_at {
        sql.push(" AND NOT completed AND due_at < ");
        DB::bind_time(sql, at);
    }
}

/// ` AND ` the title or the description is `like` (a case-insensitive `LIKE` of the dialect)
/// `%search%`.
fn push_like_search<DB: Dialect>(sql: &mut QueryBuilder<DB>, like: &str, search: &str)
where
    DB::Arguments: Default + IntoArguments<DB>,
{
    let pattern = format!("%{}%", escape_like(search));
    sql.push(" AND (title ").push(like).push(" ");
    DB::bind_text(sql, &pattern);
    sql.push(" ESCAPE '\\' OR description ").push(like).push(" ");
    DB::bind_text(sql, &pattern);
    sql.push(" ESCAPE '\\')");
}

/// `text` with `LIKE`'s wildcards and its escape character escaped (by `\`).
fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        if matches!(character, '\\' | '%' | '_') {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}

/// Drops the extra task fetched by [`ListQuery::fetch_limit`], if it came, and says where the
/// next page starts.
fn split_page(query: &ListQuery, tasks: &mut Vec<Task>) -> Option<Cursor> {
    let limit = usize::try_from(query.limit?).ok()?;
    if tasks.len() <= limit {
        return None;
    }
    tasks.truncate(limit);
    tasks.last().map(|task| Cursor::at(task, query.sort))
}

/// The keyset condition: only tasks after `after` in the listing's order (see [`order_by`]).
fn push_after<DB: Dialect>(
    sql: &mut QueryBuilder<DB>,
    sort: SortKey,
    order: SortOrder,
    after: &Cursor,
) where
    DB::Arguments: Default + IntoArguments<DB>,
{
    let beyond = match order {
        SortOrder::Asc => ">",
        SortOrder::Desc => "<",
    };
    let column = match sort {
        SortKey::Created => "created_at",
        SortKey::Updated => "updated_at",
        SortKey::Title => "title",
        SortKey::DueDate => "due_at",
        SortKey::Priority => "priority",
    };
    match &after.value {
        // Tasks without a due date come last: after one of them, only others without one.
        SortValue::DueDate(None) => {
            sql.push(" AND due_at IS NULL AND id ").push(beyond).push(" ");
            DB::bind_int(sql, after.id);
            return;
        }
        SortValue::DueDate(Some(_)) => {
            sql.push(" AND (due_at IS NULL OR (due_at, id) ").push(beyond).push(" (");
        }
        _ => {
            sql.push(" AND (").push(column).push(", id) ").push(beyond).push(" (");
        }
    }
    match &after.value {
        SortValue::Time(at) | SortValue::DueDate(Some(at)) => DB::bind_time(sql, *at),
        SortValue::Title(title) => DB::bind_text(sql, title),
        SortValue::Priority(rank) => DB::bind_int(sql, (*rank).into()),
        SortValue::DueDate(None) => unreachable!("answered above"),
    }
    sql.push(", ");
    DB::bind_int(sql, after.id);
    sql.push(if matches!(after.value, SortValue::DueDate(_)) { "))" } else { ")" });
}

/// The listing order, with `id` as the tie-break so that pages never overlap or skip. Tasks
/// without a due date sort last either way (the due-date index leads with `due_at IS NULL`).
fn order_by(sort: SortKey, order: SortOrder) -> &'static str {
    match (sort, order) {
        (SortKey::Created, SortOrder::Asc) => " ORDER BY created_at ASC, id ASC",
        (SortKey::Created, SortOrder::Desc) => " ORDER BY created_at DESC, id DESC",
        (SortKey::Updated, SortOrder::Asc) => " ORDER BY updated_at ASC, id ASC",
        (SortKey::Updated, SortOrder::Desc) => " ORDER BY updated_at DESC, id DESC",
        (SortKey::Title, SortOrder::Asc) => " ORDER BY title ASC, id ASC",
        (SortKey::Title, SortOrder::Desc) => " ORDER BY title DESC, id DESC",
        (SortKey::DueDate, SortOrder::Asc) => " ORDER BY due_at IS NULL, due_at ASC, id ASC",
        (SortKey::DueDate, SortOrder::Desc) => " ORDER BY due_at IS NULL, due_at DESC, id DESC",
        (SortKey::Priority, SortOrder::Asc) => " ORDER BY priority ASC, id ASC",
        (SortKey::Priority, SortOrder::Desc) => " ORDER BY priority DESC, id DESC",
    }
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection as _, SqliteConnection};

    /// A write from a read snapshot that another connection's commit made stale is
    /// `SQLITE_BUSY_SNAPSHOT` (517), whatever the busy timeout: a 503, like plain BUSY.
    #[tokio::test]
    async fn sqlite_busy_in_every_extended_form_is_transient() {
        let path = std::env::temp_dir().join(format!("busy-{}.db", uuid::Uuid::new_v4()));
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut first = SqliteConnection::connect(&url).await.unwrap();
        sqlx::raw_sql("PRAGMA journal_mode=WAL; CREATE TABLE t (x INTEGER)")
            .execute(&mut first)
            .await
            .unwrap();
        let mut second = SqliteConnection::connect(&url).await.unwrap();
        sqlx::raw_sql("BEGIN; SELECT count(*) FROM t").execute(&mut first).await.unwrap();
        sqlx::raw_sql("INSERT INTO t VALUES (1)").execute(&mut second).await.unwrap();
        let err = sqlx::raw_sql("INSERT INTO t VALUES (2)").execute(&mut first).await.unwrap_err();
        let code = err.as_database_error().and_then(|db| db.code()).map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("517"), "{err}");
        assert!(super::is_transient(&err));
        assert!(matches!(super::StoreError::from(err), super::StoreError::Unavailable(_)));
        drop((first, second));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    /// PostgreSQL decodes a task's columns by position, checking their names against this list
    /// in debug builds: it must be the statements' list.
    #[test]
    fn the_task_column_names_are_the_statements_columns() {
        assert_eq!(super::TASK_COLUMN_NAMES.join(", "), super::TASK_COLUMNS);
    }

    /// Both databases must go through the same schema versions.
    #[test]
    fn both_migration_folders_define_the_same_versions() {
        let versions = |migrator: sqlx::migrate::Migrator| {
            migrator.iter().map(|m| (m.version, m.description.to_string())).collect::<Vec<_>>()
        };
        let postgres = versions(sqlx::migrate!("../migrations/postgres"));
        let sqlite = versions(sqlx::migrate!("../migrations/sqlite"));
        assert!(!postgres.is_empty());
        assert_eq!(postgres, sqlite);
    }
}
