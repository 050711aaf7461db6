//! The live change stream, `GET …/tasks/events`: the change log of `/changes`, pushed as
//! server-sent events. One event per change (`id:` the cursor after it, `event: upsert` or
//! `delete`, `data:` the change object), so that a client that reconnects with `Last-Event-ID`
//! resumes exactly where it was.
//!
//! Each stream follows its owner in [`crate::events::Hub`] and, at every wake-up, reads the log
//! after its own cursor: what it sends is always what the log holds, in commit order, once.
//! Subscribing comes before the first read, so a change committed in between wakes it again
//! rather than being missed. The body is pulled by the connection: a client that stops reading
//! stops the reads, and is cut off by the connection's write deadline (`connections`), so a
//! stream never holds more than one batch.

use std::time::Duration;

use std::task::Poll;

use bytes::Bytes;
use futures::{StreamExt as _, stream::BoxStream};
use poem::{Body, IntoResponse, Response, web::sse::Event};
use poem_openapi::{
    ApiResponse,
    payload::Payload,
    registry::{MetaSchema, MetaSchemaRef, Registry},
    types::Type,
};
use tokio::time::Instant;

use super::{
    changes::{self, ChangeView},
    security::Caller,
};
use crate::{
    AppState,
    error::ApiError,
    events::Follow,
    store::{Feed, TaskStore},
};
use std::sync::Arc;

/// A comment line this often keeps proxies from closing an idle stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Changes read from the log at once.
const BATCH: i64 = 200;
/// After a failed read (the database away), the next try.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// The event stream: a `text/event-stream` body of [`ChangeView`] events.
pub struct ChangeEvents(BoxStream<'static, Event>);

impl Payload for ChangeEvents {
    const CONTENT_TYPE: &'static str = "text/event-stream";

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            items: Some(Box::new(ChangeView::schema_ref())),
            ..MetaSchema::new_with_format("array", "event-stream")
        }))
    }

    fn register(registry: &mut Registry) {
        ChangeView::register(registry);
    }
}

impl IntoResponse for ChangeEvents {
    /// poem's own `SSE` writes through an `AsyncRead` adapter that keeps a 4 KB buffer per
    /// stream; this hands each event to the connection as it is, which an idle stream's memory
    /// shows (see `docs/benchmarks.md`).
    fn into_response(self) -> Response {
        let mut events = self.0.map(|event| Bytes::from(event.to_string()));
        let mut keep_alive = tokio::time::interval_at(Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
        let body = futures::stream::poll_fn(move |cx| {
            if let Poll::Ready(event) = events.poll_next_unpin(cx) {
                return Poll::Ready(event.map(Ok::<_, std::io::Error>));
            }
            keep_alive.poll_tick(cx).map(|_| Some(Ok(Bytes::from_static(b":\n\n"))))
        });
        Response::builder()
            .content_type(<Self as Payload>::CONTENT_TYPE)
            .header("Cache-Control", "no-cache")
            // Tells nginx-style proxies not to hold events back.
            .header("X-Accel-Buffering", "no")
            .body(Body::from_bytes_stream(body))
    }
}

#[derive(ApiResponse)]
pub enum EventsResponse {
    /// Server-sent events, one per change: `id:` a cursor (send it back as `Last-Event-ID`),
    /// `event:` `upsert` or `delete`, `data:` the change (as in `/changes`). `event: resync`
    /// (data `{}`) ends a stream whose cursor is too old: sync again without it. A comment
    /// line comes at least every 15 s. The stream ends when the token expires: reconnect with a
    /// fresh one and `Last-Event-ID`.
    #[oai(status = 200)]
    Ok(ChangeEvents),
}

/// Opens `caller`'s stream, after `last_event_id` (else `since`; else from now on).
pub async fn open(
    state: &AppState,
    caller: &Caller,
    last_event_id: Option<&str>,
    since: Option<&str>,
) -> Result<EventsResponse, ApiError> {
    // A reconnecting client sends the same URL with `Last-Event-ID`: the header is newer.
    let since = last_event_id.or(since).map(changes::decode).transpose()?;
    let follow = state.events.follow(&caller.user_id).ok_or(ApiError::TOO_MANY_STREAMS)?;
    let cursor = match since {
        Some(since) => since,
        None => {
            let owner = [String::clone(&caller.user_id)];
            state.store.versions(&owner).await?.first().map_or(0, |(_, version)| *version)
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let follower = Follower {
        store: state.store.clone(),
        owner: caller.user_id.clone(),
        cursor,
        follow,
        expires: Instant::now() + Duration::from_secs(caller.expires_at.saturating_sub(now)),
        closing: Box::pin(state.draining.closing()),
        pending: std::collections::VecDeque::new(),
        caught_up: false,
        ended: false,
    };
    let events = futures::stream::unfold(follower, |mut follower| async move {
        let event = follower.next().await?;
        Some((event, follower))
    });
    Ok(EventsResponse::Ok(ChangeEvents(events.boxed())))
}

/// One stream's state.
struct Follower {
    store: Arc<dyn TaskStore>,
    owner: std::sync::Arc<String>,
    /// The owner's version up to which everything has been sent (or queued in `pending`).
    cursor: i64,
    follow: Follow,
    /// The credential's expiry: the stream ends there.
    expires: Instant,
    closing: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
    pending: std::collections::VecDeque<Event>,
    /// The last read found nothing more: wait for a wake-up before reading again.
    caught_up: bool,
    ended: bool,
}

impl Follower {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            if self.caught_up {
                tokio::select! {
                    () = self.follow.woken() => self.caught_up = false,
                    () = tokio::time::sleep_until(self.expires) => return None,
                    () = &mut self.closing => return None,
                }
            }
            match self.store.changes(&self.owner, Some(self.cursor), BATCH).await {
                Ok(Feed::Gone) => {
                    crate::metrics::event_sent("resync");
                    self.ended = true;
                    return Some(Event::message("{}").event_type("resync"));
                }
                Ok(Feed::Changes(batch)) => {
                    for (change, version) in batch.changes.into_iter().zip(batch.versions) {
                        self.pending
                            .push_back(event(ChangeView::new(change, &self.owner), version));
                    }
                    self.cursor = batch.cursor;
                    self.caught_up = !batch.more;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "a live stream could not read the change log");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY_AFTER_FAILURE) => {}
                        () = tokio::time::sleep_until(self.expires) => return None,
                        () = &mut self.closing => return None,
                    }
                }
            }
        }
    }
}

fn event(change: ChangeView, version: i64) -> Event {
    let kind = match change {
        ChangeView::Upsert(_) => "upsert",
        ChangeView::Delete(_) => "delete",
    };
    crate::metrics::event_sent(kind);
    // Serializing our own types cannot fail.
    let data = serde_json::to_string(&change).unwrap_or_default();
    Event::message(data).id(changes::encode(version)).event_type(kind)
}
