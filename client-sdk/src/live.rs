//! Following the live change stream (`follow_changes`, `follow_user_changes`): progenitor hands
//! a `text/event-stream` body over as bytes; [`events`] turns them into typed events.
//!
//! ```no_run
//! # async fn follow(client: &client_sdk::Client, cursor: Option<String>) -> Option<String> {
//! use futures::StreamExt as _;
//! use client_sdk::live::{self, LiveEvent};
//!
//! let mut last = cursor;
//! let request = client.follow_changes();
//! let request = match &last { Some(id) => request.last_event_id(id.as_str()), None => request };
//! let mut events = live::events(request.send().await.ok()?.into_inner());
//! while let Some(Ok(event)) = events.next().await {
//!     match event {
//!         LiveEvent::Change { cursor, change } => { /* apply `change` */ last = Some(cursor) }
//!         LiveEvent::Resync => return None, // sync again with `list_changes`
//!     }
//! }
//! last // the stream ended (token expiry, a restart): reconnect from here
//! # }
//! ```
//!
//! A client made by [`crate::authenticated`] gives up on a whole response after 30 s: follow
//! streams with one from [`crate::streaming`], which only gives up on a silent connection.

use bytes::{Buf as _, BytesMut};
use futures::{StreamExt as _, stream::BoxStream};

use crate::{ByteStream, types};

/// One event of the stream.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// A change, and the cursor right after it: send it back as `Last-Event-ID` to resume.
    Change { cursor: String, change: types::Change },
    /// The cursor was too old: sync again with `list_changes` (without `since`), then follow
    /// from the cursor that gives. The stream ends after this.
    Resync,
}

/// Why the stream broke off.
#[derive(Debug)]
pub enum LiveError {
    /// The connection failed.
    Transport(reqwest::Error),
    /// An event this client does not understand (a server newer than the document?).
    Malformed(String),
}

impl std::fmt::Display for LiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LiveError::Transport(err) => write!(f, "event stream: {err}"),
            LiveError::Malformed(what) => write!(f, "event stream: {what}"),
        }
    }
}

impl std::error::Error for LiveError {}

/// The typed events of a `follow_changes` (or `follow_user_changes`) response body, in order;
/// keep-alive comments are skipped.
pub fn events(body: ByteStream) -> BoxStream<'static, Result<LiveEvent, LiveError>> {
    let state = (body.into_inner(), BytesMut::new(), false);
    let events = futures::stream::unfold(state, |(mut body, mut buffer, mut done)| async move {
        loop {
            if done {
                return None;
            }
            if let Some(end) = buffer.windows(2).position(|pair| pair == b"\n\n") {
                let block = buffer.split_to(end + 2);
                match parse(&block) {
                    Ok(None) => continue,
                    Ok(Some(event)) => {
                        done = matches!(event, LiveEvent::Resync);
                        return Some((Ok(event), (body, buffer, done)));
                    }
                    Err(err) => return Some((Err(err), (body, buffer, true))),
                }
            }
            match body.next().await? {
                Ok(mut bytes) => {
                    while bytes.has_remaining() {
                        let chunk = bytes.chunk();
                        buffer.extend_from_slice(chunk);
                        let n = chunk.len();
                        bytes.advance(n);
                    }
                }
                Err(err) => return Some((Err(LiveError::Transport(err)), (body, buffer, true))),
            }
        }
    });
    events.boxed()
}

/// One event block; `None` for a comment.
fn parse(block: &[u8]) -> Result<Option<LiveEvent>, LiveError> {
    let text = std::str::from_utf8(block)
        .map_err(|_| LiveError::Malformed("an event that is not UTF-8".into()))?;
    let (mut id, mut kind, mut data) = (None, None, None);
    for line in text.lines() {
        let (name, value) = line.split_once(": ").unwrap_or((line, ""));
        match name {
            "id" => id = Some(value),
            "event" => kind = Some(value),
            "data" => data = Some(value),
            _ => {}
        }
    }
    match (kind, id, data) {
        (None, None, None) => Ok(None),
        (Some("resync"), ..) => Ok(Some(LiveEvent::Resync)),
        (Some("upsert" | "delete"), Some(cursor), Some(data)) => {
            let change = serde_json::from_str(data).map_err(|err| {
                LiveError::Malformed(format!("a change that does not parse: {err}"))
            })?;
            Ok(Some(LiveEvent::Change { cursor: cursor.to_owned(), change }))
        }
        _ => Err(LiveError::Malformed(format!("an unknown event: {text:?}"))),
    }
}
