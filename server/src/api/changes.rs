//! The change feed, `GET …/tasks/changes`: what an offline or second device syncs from. The
//! store's change log is read from a cursor; the cursor is the owner's version after the last
//! change returned, handed out opaque.

use std::sync::Arc;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use poem_openapi::{ApiResponse, Object, Union, types::Example};

use super::{payload::JsonBody, security::Caller, types::RangedInt, types::TaskView};
use crate::{
    AppState,
    error::{ApiError, FieldError},
    store::{self, Feed},
};

/// The largest `limit` of one read of the feed, and the default.
pub const CHANGES_LIMIT_MAX: i64 = 1000;
pub const CHANGES_LIMIT_DEFAULT: i64 = 500;

/// `limit` of a feed read: 1 to [`CHANGES_LIMIT_MAX`].
pub type ChangesLimit = RangedInt<1, CHANGES_LIMIT_MAX>;

pub fn default_limit() -> ChangesLimit {
    RangedInt(CHANGES_LIMIT_DEFAULT)
}

/// Changes since the cursor, oldest first, and where to resume.
#[derive(Debug, Clone, Object, serde::Serialize)]
#[oai(rename = "ChangeBatch", example)]
pub struct ChangeBatchView {
    /// In the order they were committed; each task at most once, in its latest state.
    pub changes: Vec<ChangeView>,
    /// Opaque: send it as `since` next time (or as `Last-Event-ID` to the event stream).
    pub cursor: String,
    /// More changes are waiting now: ask again at once with `cursor`.
    pub more: bool,
}

/// One change: a task created or modified (`upsert`, its state now) or deleted (`delete`).
#[derive(Debug, Clone, Union, serde::Serialize)]
#[oai(rename = "Change", discriminator_name = "op")]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ChangeView {
    #[oai(mapping = "upsert")]
    Upsert(UpsertChange),
    #[oai(mapping = "delete")]
    Delete(DeleteChange),
}

/// A task created or modified: store it (replacing any copy with the same `id`).
#[derive(Debug, Clone, Object, serde::Serialize)]
#[oai(rename = "UpsertChange")]
pub struct UpsertChange {
    pub task: TaskView,
}

/// A task deleted: drop any copy with this `id`.
#[derive(Debug, Clone, Object, serde::Serialize)]
pub struct DeleteChange {
    pub id: i64,
}

impl Example for ChangeBatchView {
    fn example() -> Self {
        Self {
            changes: vec![
                ChangeView::Upsert(UpsertChange { task: TaskView::example() }),
                ChangeView::Delete(DeleteChange { id: 41 }),
            ],
            cursor: encode(7),
            more: false,
        }
    }
}

#[derive(ApiResponse)]
pub enum ChangesResponse {
    /// The changes after `since` (without it: every task), and the cursor to resume from.
    #[oai(status = 200)]
    Ok(JsonBody<ChangeBatchView>),
}

/// The feed for `caller` after `since`.
pub async fn read(
    state: &AppState,
    caller: &Caller,
    since: Option<&str>,
    limit: ChangesLimit,
) -> Result<ChangesResponse, ApiError> {
    let since = since.map(decode).transpose()?;
    let limit = limit
        .checked()
        .map_err(|message| ApiError::Unprocessable(vec![FieldError::new("limit", message)]))?;
    match state.store.changes(&caller.user_id, since, limit).await? {
        Feed::Gone => Err(ApiError::CURSOR_GONE),
        Feed::Changes(batch) => Ok(ChangesResponse::Ok(JsonBody(ChangeBatchView {
            changes: batch
                .changes
                .into_iter()
                .map(|change| ChangeView::new(change, &caller.user_id))
                .collect(),
            cursor: encode(batch.cursor),
            more: batch.more,
        }))),
    }
}

impl ChangeView {
    pub(super) fn new(change: store::Change, owner: &Arc<String>) -> Self {
        match change {
            store::Change::Upsert(task) => {
                ChangeView::Upsert(UpsertChange { task: TaskView::new(task, owner) })
            }
            store::Change::Delete { id } => ChangeView::Delete(DeleteChange { id }),
        }
    }
}

/// The prefix that marks a feed cursor (and its format's version).
const PREFIX: &str = "v1.";

/// A feed cursor: the owner's version, opaque to clients.
pub fn encode(version: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{PREFIX}{version}"))
}

/// The version in a cursor that [`encode`] made; anything else is a 400.
pub fn decode(cursor: &str) -> Result<i64, ApiError> {
    let invalid = || ApiError::BadRequest("`since` is not a cursor that this feed gave out".into());
    if cursor.len() > 64 {
        return Err(invalid());
    }
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let text = std::str::from_utf8(&bytes).map_err(|_| invalid())?;
    let digits = text.strip_prefix(PREFIX).ok_or_else(invalid)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    digits.parse().map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_nothing_else_decodes() {
        for version in [0, 1, 42, i64::MAX] {
            let cursor = encode(version);
            assert!(cursor.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)));
            assert_eq!(decode(&cursor).unwrap(), version);
        }
        let bad = [
            "",
            "!!",
            "djEu",    // "v1."
            "djEuLTE", // "v1.-1"
            "djIuNQ",  // "v2.5"
            &URL_SAFE_NO_PAD.encode("v1.99999999999999999999"),
            &URL_SAFE_NO_PAD.encode("v1.+5"),
            &URL_SAFE_NO_PAD.encode("v1.5\0"),
            &"A".repeat(100),
        ];
        for text in bad {
            assert!(matches!(decode(text), Err(ApiError::BadRequest(_))), "{text}");
        }
    }
}
