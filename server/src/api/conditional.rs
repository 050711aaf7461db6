//! Conditional requests (RFC 9110 §13): every single-task response carries a strong `ETag`
//! derived from `updated_at` (which strictly moves forward on every modification); writes honour
//! `If-Match`, reads of one task `If-None-Match`.

use chrono::{DateTime, Utc};

use crate::{
    error::ApiError,
    store::{Precondition, Task, Written},
};

/// The task's strong entity tag.
pub fn etag(task: &Task) -> String {
    format!("\"{}\"", task.updated_at.timestamp_micros())
}

/// `If-Match` → the store's precondition. `*` (like no header) holds for any existing task;
/// weak tags never match (strong comparison), nor do tags that are not ours.
pub fn precondition(if_match: Option<&str>) -> Precondition {
    match if_match {
        None => Precondition(None),
        Some(list) if list.split(',').any(|tag| tag.trim() == "*") => Precondition(None),
        Some(list) => {
            Precondition(Some(list.split(',').filter_map(|tag| our_tag(tag.trim())).collect()))
        }
    }
}

/// The time a tag of ours names; a tag naming a time the database cannot hold names no task.
fn our_tag(tag: &str) -> Option<DateTime<Utc>> {
    let micros = tag.strip_prefix('"')?.strip_suffix('"')?.parse().ok()?;
    DateTime::from_timestamp_micros(micros).filter(crate::store::storable)
}

/// Whether `If-None-Match` matches the current tag (weak comparison, RFC 9110 §13.1.2): then a
/// GET answers 304.
pub fn none_match(if_none_match: Option<&str>, current: &str) -> bool {
    if_none_match.is_some_and(|list| {
        list.split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.trim_start_matches("W/") == current)
    })
}

/// A write's outcome as the API reports it: 404 for a missing (or foreign) task, 412 when the
/// task exists but `If-Match` did not hold.
pub fn written<T>(outcome: Written<T>) -> Result<T, ApiError> {
    match outcome {
        Written::Done(value) => Ok(value),
        Written::Missing => Err(ApiError::TASK_NOT_FOUND),
        Written::PreconditionFailed => Err(ApiError::PreconditionFailed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(micros: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(micros).unwrap()
    }

    #[test]
    fn if_match_lists_stars_and_weak_tags() {
        assert_eq!(precondition(None), Precondition(None));
        assert_eq!(precondition(Some("*")), Precondition(None));
        assert_eq!(precondition(Some("\"5\"")), Precondition(Some(vec![at(5)])));
        assert_eq!(precondition(Some("\"5\", \"7\"")), Precondition(Some(vec![at(5), at(7)])));
        assert_eq!(precondition(Some("W/\"5\"")), Precondition(Some(vec![])));
        assert_eq!(precondition(Some("\"abc\", 5")), Precondition(Some(vec![])));
        // Times outside what the database holds match nothing (never an error).
        assert_eq!(precondition(Some("\"-300000000000000000\"")), Precondition(Some(vec![])));
        assert_eq!(precondition(Some("\"9223372036854775807\"")), Precondition(Some(vec![])));
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        assert!(none_match(Some("\"5\""), "\"5\""));
        assert!(none_match(Some("W/\"5\""), "\"5\""));
        assert!(none_match(Some("\"1\", \"5\""), "\"5\""));
        assert!(none_match(Some("*"), "\"5\""));
        assert!(!none_match(Some("\"4\""), "\"5\""));
        assert!(!none_match(None, "\"5\""));
    }
}
