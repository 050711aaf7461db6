//! Live changes, behind the HTTP layer: who follows whose change log on this instance, and
//! waking them when it moves, whichever instance wrote.
//!
//! A wake-up says only "this owner's log has moved": each stream then reads the log from its
//! own cursor (`api::events`), so a wake-up lost, repeated or early costs at most one read, and
//! never a change. Wake-ups come from:
//!
//! - this instance's own writes, at once (the only source on SQLite: one process, one file);
//! - on PostgreSQL, `NOTIFY task_changes` from the instance that wrote, heard on a direct
//!   connection (`DATABASE_LISTEN_URL`, else `DATABASE_URL`); a listener that reconnects wakes
//!   every stream, since what was notified meanwhile is lost, and a slow safety poll heals
//!   anything else (writes made outside the service among them);
//! - behind a transaction-mode pooler without `DATABASE_LISTEN_URL` (where `LISTEN` silently
//!   hears nothing), a poll of the followed owners' versions twice a second instead.
//!
//! A poll is one query for every followed owner at once, and wakes only those whose version
//! moved.
//!
//! The notification is sent after the write commits, never inside it: PostgreSQL serialises
//! the commits of notifying transactions through their WAL flush, which halved the write
//! throughput of a durable cluster when the change-log trigger notified (see the migration
//! `20261202100000_notify_after_commit.sql`). Each instance has one announcer that sends the
//! owners its writes changed, one statement at a time; what commits while one is in flight
//! goes, deduplicated, in the next.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{mpsc, watch};

use crate::store::{self, Heard, TaskStore};

/// How often the versions are polled when no notification can be heard: well within the 1 s
/// in which a change must reach every stream.
pub const POLL_PERIOD: Duration = Duration::from_millis(500);
/// How often they are polled besides `LISTEN`, against anything lost without a reconnect (and a
/// `LISTEN` that goes through a pooler nobody said was one).
pub const SAFETY_POLL_PERIOD: Duration = Duration::from_secs(10);
/// Owners waiting for the announcer; past this many a change is not announced (the other
/// instances' safety poll finds it).
const ANNOUNCE_QUEUE: usize = 4096;
/// At most this many owners in one announcement statement.
const ANNOUNCE_BATCH: usize = 256;
/// The shortest time between two announcements. One per write cost a statement, a commit that
/// notifies and a wake-up of every listener per write (a fifth of the requests of the bench's
/// mix); at most 20 a second per instance cost almost nothing, and a change still reaches the
/// other instances' streams well within the second that the contract allows.
const ANNOUNCE_EVERY: Duration = Duration::from_millis(50);

/// How this instance learns of other instances' writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Only its own writes exist (SQLite).
    Local,
    /// PostgreSQL's `LISTEN` on this (direct) URL, with a safety poll.
    Listen(String),
    /// A poll of the log every [`POLL_PERIOD`].
    Poll,
}

impl Source {
    /// SQLite has no other instance; PostgreSQL `LISTEN`s on `listen_url`, else on
    /// `database_url` unless that is a transaction-mode pooler, where `LISTEN` hears nothing:
    /// then it polls. A pooler is told by the statement cache being off (the setting such
    /// poolers need) or by Neon's pooled host name (`…-pooler.…`).
    pub fn for_database(
        database_url: &str,
        listen_url: Option<&str>,
        statement_cache_capacity: usize,
    ) -> Self {
        let pooled = statement_cache_capacity == 0 || is_neon_pooler(database_url);
        match listen_url {
            _ if database_url.starts_with("sqlite:") => Source::Local,
            Some(listen_url) => Source::Listen(listen_url.to_owned()),
            None if pooled => Source::Poll,
            None => Source::Listen(database_url.to_owned()),
        }
    }
}

/// Whether the URL's host is a Neon pooled endpoint (`ep-…-pooler.<region>.aws.neon.tech`).
fn is_neon_pooler(database_url: &str) -> bool {
    let after_scheme = database_url.split_once("://").map_or(database_url, |(_, rest)| rest);
    let authority = after_scheme.split(['/', '?']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    host.split('.').next().is_some_and(|label| label.ends_with("-pooler"))
}

/// The followers of this instance, by owner.
#[derive(Debug)]
pub struct Hub {
    owners: Mutex<HashMap<String, Followed>>,
    streams_per_owner: usize,
    /// Where this instance's own writes are announced to the others, when they listen.
    announcer: std::sync::OnceLock<mpsc::Sender<String>>,
}

#[derive(Debug)]
struct Followed {
    streams: usize,
    wake: watch::Sender<()>,
    /// The version the last poll found, to wake only on a move.
    polled: Option<i64>,
}

/// One stream's place among the followers: its wake-ups, and a place under the per-owner cap
/// that it gives back when dropped.
#[derive(Debug)]
pub struct Follow {
    hub: Arc<Hub>,
    owner: String,
    woken: watch::Receiver<()>,
}

impl Hub {
    pub fn new(streams_per_owner: usize) -> Arc<Self> {
        Arc::new(Self {
            owners: Mutex::default(),
            streams_per_owner,
            announcer: std::sync::OnceLock::new(),
        })
    }

    /// Follows `owner`'s log from now on; `None` when they hold the most streams already.
    pub fn follow(self: &Arc<Self>, owner: &str) -> Option<Follow> {
        let mut owners = self.owners.lock().unwrap_or_else(|poison| poison.into_inner());
        let followed = owners.entry(owner.to_owned()).or_insert_with(|| Followed {
            streams: 0,
            wake: watch::Sender::new(()),
            polled: None,
        });
        if followed.streams >= self.streams_per_owner {
            return None;
        }
        followed.streams += 1;
        crate::metrics::event_streams(1.0);
        Some(Follow {
            hub: self.clone(),
            owner: owner.to_owned(),
            woken: followed.wake.subscribe(),
        })
    }

    /// `owner`'s log has moved.
    pub fn wake(&self, owner: &str) {
        let owners = self.owners.lock().unwrap_or_else(|poison| poison.into_inner());
        if let Some(followed) = owners.get(owner) {
            followed.wake.send_replace(());
        }
    }

    /// This instance committed a write of `owner`'s: wakes the streams here at once and
    /// announces it to the other instances.
    pub fn committed(&self, owner: &str) {
        self.wake(owner);
        if let Some(announcer) = self.announcer.get() {
            // Full: the announcer is far behind; the others' safety poll finds this change.
            let _ = announcer.try_send(owner.to_owned());
        }
    }

    /// Anything may have moved.
    fn wake_all(&self) {
        let owners = self.owners.lock().unwrap_or_else(|poison| poison.into_inner());
        for followed in owners.values() {
            followed.wake.send_replace(());
        }
    }

    fn followed(&self) -> Vec<String> {
        let owners = self.owners.lock().unwrap_or_else(|poison| poison.into_inner());
        owners.keys().cloned().collect()
    }

    /// Wakes the owners whose version is not the one the previous poll found.
    async fn poll(&self, store: &dyn TaskStore) {
        let followed = self.followed();
        if followed.is_empty() {
            return;
        }
        let versions = match store.versions(&followed).await {
            Ok(versions) => versions,
            Err(err) => {
                tracing::warn!(error = %err, "could not poll the change log for live streams");
                return;
            }
        };
        let mut owners = self.owners.lock().unwrap_or_else(|poison| poison.into_inner());
        for (owner, version) in versions {
            if let Some(followed) = owners.get_mut(&owner)
                && followed.polled.replace(version) != Some(version)
            {
                followed.wake.send_replace(());
            }
        }
    }

    /// Starts learning of other instances' writes from `source`, for the life of the process.
    pub fn spawn(self: &Arc<Self>, store: Arc<dyn TaskStore>, source: Source) {
        // Announced whether or not this instance can listen itself: another one may (one
        // behind a pooler, another with `DATABASE_LISTEN_URL`), and `NOTIFY` passes poolers.
        if source != Source::Local {
            let (changed, announced) = mpsc::channel(ANNOUNCE_QUEUE);
            if self.announcer.set(changed).is_ok() {
                tokio::spawn(announce(store.clone(), announced));
            }
        }
        match source {
            Source::Local => {}
            Source::Poll => {
                tracing::warn!(
                    "live changes: polling the change log twice a second (no LISTEN behind a \
                     transaction-mode pooler; set DATABASE_LISTEN_URL to a direct connection)"
                );
                tokio::spawn(self.clone().poll_every(store, POLL_PERIOD));
            }
            Source::Listen(url) => {
                let (heard, mut hearing) = mpsc::channel(1024);
                tokio::spawn(store::listen_for_changes(url, heard));
                let hub = self.clone();
                tokio::spawn(async move {
                    while let Some(heard) = hearing.recv().await {
                        match heard {
                            Heard::Changed(owner) => hub.wake(&owner),
                            Heard::Reconnected => hub.wake_all(),
                        }
                    }
                });
                tokio::spawn(self.clone().poll_every(store, SAFETY_POLL_PERIOD));
            }
        }
    }

    async fn poll_every(self: Arc<Self>, store: Arc<dyn TaskStore>, period: Duration) {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.poll(&*store).await;
        }
    }
}

/// Sends the owners this instance's writes changed, at most one announcement per
/// [`ANNOUNCE_EVERY`]: the first write after a quiet spell goes at once, and what commits while
/// the announcer waits goes, deduplicated, in the next.
async fn announce(store: Arc<dyn TaskStore>, changed: mpsc::Receiver<String>) {
    announce_throttled(changed, |owners| {
        let store = store.clone();
        async move {
            if let Err(err) = store.announce(&owners).await {
                tracing::warn!(error = %err, "could not announce changes to the other instances");
            }
        }
    })
    .await;
}

async fn announce_throttled<Sent: Future<Output = ()>>(
    mut changed: mpsc::Receiver<String>,
    mut send: impl FnMut(Vec<String>) -> Sent,
) {
    let mut owners = Vec::with_capacity(ANNOUNCE_BATCH);
    while changed.recv_many(&mut owners, ANNOUNCE_QUEUE).await > 0 {
        let next = tokio::time::Instant::now() + ANNOUNCE_EVERY;
        owners.sort_unstable();
        owners.dedup();
        for batch in owners.chunks(ANNOUNCE_BATCH) {
            send(batch.to_vec()).await;
        }
        owners.clear();
        // Not woken by the writes meanwhile: they wait in the channel for the next round.
        tokio::time::sleep_until(next).await;
    }
}

impl Follow {
    /// Resolves at the next wake-up since the last one seen (at once if one came meanwhile).
    pub async fn woken(&mut self) {
        // An error: the hub dropped the owner, which it never does while this follows it.
        let _ = self.woken.changed().await;
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let mut owners = self.hub.owners.lock().unwrap_or_else(|poison| poison.into_inner());
        if let Some(followed) = owners.get_mut(&self.owner) {
            followed.streams -= 1;
            if followed.streams == 0 {
                owners.remove(&self.owner);
            }
        }
        crate::metrics::event_streams(-1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pooler_is_polled_and_a_direct_connection_listened_to() {
        let neon = "postgres://u:p@ep-cool-1-pooler.eu-central-1.aws.neon.tech/db?sslmode=require";
        let direct = "postgres://u:p@ep-cool-1.eu-central-1.aws.neon.tech/db?sslmode=require";
        assert_eq!(Source::for_database("sqlite://tasks.db", None, 100), Source::Local);
        assert_eq!(Source::for_database(neon, None, 100), Source::Poll);
        assert_eq!(Source::for_database(direct, None, 0), Source::Poll);
        assert_eq!(Source::for_database(direct, None, 100), Source::Listen(direct.into()));
        assert_eq!(Source::for_database(neon, Some(direct), 100), Source::Listen(direct.into()));
        assert!(!is_neon_pooler("postgres://u:p-pooler@host/db"), "a password is no host");
    }

    #[tokio::test]
    async fn an_owner_holds_at_most_the_cap_and_wakes_only_their_own_followers() {
        let hub = Hub::new(2);
        let mut first = hub.follow("alice").unwrap();
        let second = hub.follow("alice").unwrap();
        assert!(hub.follow("alice").is_none());
        let mut bob = hub.follow("bob").unwrap();

        hub.wake("alice");
        tokio::time::timeout(Duration::from_secs(1), first.woken()).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(50), bob.woken()).await.is_err());

        drop(second);
        let third = hub.follow("alice").unwrap();
        drop((first, third));
        assert_eq!(hub.followed(), vec!["bob".to_owned()]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_of_writes_is_announced_once_per_interval_and_a_lone_one_at_once() {
        let (changed, announced) = mpsc::channel(ANNOUNCE_QUEUE);
        let (sent, mut announcements) = mpsc::unbounded_channel();
        tokio::spawn(announce_throttled(announced, move |owners| {
            sent.send((tokio::time::Instant::now(), owners)).unwrap();
            std::future::ready(())
        }));
        let started = tokio::time::Instant::now();

        // A write every millisecond for a second, by ten owners in turn.
        for write in 0..1000 {
            changed.send(format!("owner-{}", write % 10)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(ANNOUNCE_EVERY * 2).await;
        let mut rounds = Vec::new();
        while let Ok(round) = announcements.try_recv() {
            rounds.push(round);
        }
        let intervals = (started.elapsed().as_millis() / ANNOUNCE_EVERY.as_millis()) as usize;
        assert!(
            rounds.len() <= intervals + 1,
            "{} announcements in {intervals} intervals",
            rounds.len()
        );
        assert_eq!(rounds[0].0, started, "the first write waits for nothing");
        for pair in rounds.windows(2) {
            assert!(pair[1].0 - pair[0].0 >= ANNOUNCE_EVERY, "two announcements too close");
        }
        for (_, owners) in &rounds[1..rounds.len() - 1] {
            assert_eq!(owners.len(), 10, "each round carries every owner once: {owners:?}");
        }

        // After a quiet spell, a lone write goes at once.
        tokio::time::sleep(ANNOUNCE_EVERY * 3).await;
        let lone = tokio::time::Instant::now();
        changed.send("owner-0".to_owned()).await.unwrap();
        let (at, owners) = announcements.recv().await.unwrap();
        assert_eq!((at, owners), (lone, vec!["owner-0".to_owned()]));
    }
}
