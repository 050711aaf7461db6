//! Request bodies → validated domain values, with every invalid field reported at once (422).
//! Types are strict: `"title": 5` or `"completed": "true"` are errors, not coerced.

use serde_json::{Map, Value};

use chrono::{DateTime, NaiveDate, Utc};

use crate::{
    error::{ApiError, FieldError},
    limits::{DESCRIPTION_MAX_CHARS, TAG_MAX_CHARS, TAGS_MAX, TITLE_MAX_CHARS},
    store::{NewTask, Priority, TaskPatch, storable},
};
/// PostgreSQL text cannot hold U+0000 and SQLite's `length()` stops at it: refuse it up front.
const NUL_MESSAGE: &str = "must not contain NUL (U+0000) characters";

pub fn new_task(body: &Value) -> Result<NewTask, ApiError> {
    let object = as_object(body)?;
    let mut errors = Vec::new();
    let title = match object.get("title") {
        None => {
            errors.push(FieldError::new("title", "is required"));
            None
        }
        Some(value) => title(value, &mut errors),
    };
    let description = object.get("description").and_then(|value| description(value, &mut errors));
    let completed = object.get("completed").and_then(|value| completed(value, &mut errors));
    let priority = object.get("priority").and_then(|value| priority(value, &mut errors));
    let due_at = object.get("due_date").and_then(|value| due_date(value, &mut errors));
    let tags = object.get("tags").and_then(|value| tags(value, &mut errors));
    match title {
        Some(title) if errors.is_empty() => Ok(NewTask {
            title,
            description: description.flatten(),
            completed: completed.unwrap_or(false),
            priority: priority.unwrap_or_default(),
            due_at: due_at.flatten(),
            tags: tags.unwrap_or_default(),
        }),
        _ => Err(ApiError::Unprocessable(errors)),
    }
}

pub fn task_patch(body: &Value) -> Result<TaskPatch, ApiError> {
    let object = as_object(body)?;
    let mut errors = Vec::new();
    let patch = TaskPatch {
        title: object.get("title").and_then(|value| title(value, &mut errors)),
        description: object.get("description").and_then(|value| description(value, &mut errors)),
        completed: object.get("completed").and_then(|value| completed(value, &mut errors)),
        priority: object.get("priority").and_then(|value| priority(value, &mut errors)),
        due_at: object.get("due_date").and_then(|value| due_date(value, &mut errors)),
        tags: object.get("tags").and_then(|value| tags(value, &mut errors)),
    };
    if !errors.is_empty() {
        return Err(ApiError::Unprocessable(errors));
    }
    if patch == TaskPatch::default() {
        return Err(ApiError::Unprocessable(vec![FieldError::new(
            "body",
            "must contain at least one of title, description, completed, priority, due_date, tags",
        )]));
    }
    Ok(patch)
}

fn as_object(body: &Value) -> Result<&Map<String, Value>, ApiError> {
    body.as_object().ok_or_else(|| {
        ApiError::Unprocessable(vec![FieldError::new("body", "must be a JSON object")])
    })
}

fn title(value: &Value, errors: &mut Vec<FieldError>) -> Option<String> {
    let Some(title) = value.as_str() else {
        errors.push(FieldError::new("title", "must be a string"));
        return None;
    };
    if title.contains('\0') {
        errors.push(FieldError::new("title", NUL_MESSAGE));
        None
    } else if title.trim().is_empty() {
        errors.push(FieldError::new("title", "must not be blank"));
        None
    } else if title.chars().count() > TITLE_MAX_CHARS {
        errors.push(FieldError::new(
            "title",
            format!("must be at most {TITLE_MAX_CHARS} characters"),
        ));
        None
    } else {
        Some(title.to_owned())
    }
}

/// `Some(None)` clears: `null` and `""` both mean "no description".
fn description(value: &Value, errors: &mut Vec<FieldError>) -> Option<Option<String>> {
    match value {
        Value::Null => Some(None),
        Value::String(text) if text.is_empty() => Some(None),
        Value::String(text) if text.contains('\0') => {
            errors.push(FieldError::new("description", NUL_MESSAGE));
            None
        }
        Value::String(text) if text.chars().count() > DESCRIPTION_MAX_CHARS => {
            errors.push(FieldError::new(
                "description",
                format!("must be at most {DESCRIPTION_MAX_CHARS} characters"),
            ));
            None
        }
        Value::String(text) => Some(Some(text.clone())),
        _ => {
            errors.push(FieldError::new("description", "must be a string or null"));
            None
        }
    }
}

fn completed(value: &Value, errors: &mut Vec<FieldError>) -> Option<bool> {
    let completed = value.as_bool();
    if completed.is_none() {
        errors.push(FieldError::new("completed", "must be a boolean"));
    }
    completed
}

fn priority(value: &Value, errors: &mut Vec<FieldError>) -> Option<Priority> {
    let priority = value.as_str().and_then(Priority::parse);
    if priority.is_none() {
        errors.push(FieldError::new("priority", "must be one of low, medium, high, urgent"));
    }
    priority
}

/// `Some(None)` clears: `null`.
fn due_date(value: &Value, errors: &mut Vec<FieldError>) -> Option<Option<DateTime<Utc>>> {
    if value.is_null() {
        return Some(None);
    }
    let parsed = value.as_str().and_then(date_or_date_time);
    match parsed {
        Some(at) if storable(&at) => Some(Some(at)),
        Some(_) => {
            errors.push(FieldError::new("due_date", "must be within the years 1 to 9999"));
            None
        }
        None => {
            errors.push(FieldError::new(
                "due_date",
                "must be null, an RFC 3339 date-time or a date (YYYY-MM-DD)",
            ));
            None
        }
    }
}

/// An RFC 3339 date-time, or a full date meaning that day at 00:00 UTC.
pub fn date_or_date_time(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc));
    }
    // Only the full `YYYY-MM-DD` form (chrono alone would take `2026-1-2`).
    let well_formed = text.len() == 10 && text.as_bytes()[4] == b'-' && text.as_bytes()[7] == b'-';
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().filter(|_| well_formed)?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc())
}

/// Trimmed, lower-cased, duplicates dropped (the first kept, in order); `null` is none.
fn tags(value: &Value, errors: &mut Vec<FieldError>) -> Option<Vec<String>> {
    // `null` is no tags: generated clients leave an empty array out, and send `null` to clear.
    if value.is_null() {
        return Some(Vec::new());
    }
    let Some(items) = value.as_array() else {
        errors.push(FieldError::new("tags", "must be an array of strings"));
        return None;
    };
    let mut tags: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let problem = match item.as_str().map(|tag| tag.trim().to_lowercase()) {
            None => Some("must be an array of strings".to_owned()),
            Some(tag) => match tag_problem(&tag) {
                Some(problem) => Some(problem),
                None => {
                    if !tags.contains(&tag) {
                        tags.push(tag);
                    }
                    None
                }
            },
        };
        if let Some(problem) = problem {
            errors.push(FieldError::new("tags", problem));
            return None;
        }
    }
    if tags.len() > TAGS_MAX {
        errors.push(FieldError::new("tags", format!("must hold at most {TAGS_MAX} tags")));
        return None;
    }
    Some(tags)
}

/// What is wrong with a tag (trimmed and lower-cased), if anything. Commas are refused because
/// `tag=` filters take comma-separated lists.
pub fn tag_problem(tag: &str) -> Option<String> {
    if tag.is_empty() {
        Some("each tag must not be blank".into())
    } else if tag.chars().count() > TAG_MAX_CHARS {
        Some(format!("each tag must be at most {TAG_MAX_CHARS} characters"))
    } else if tag.contains(',') {
        Some("a tag must not contain a comma".into())
    } else if tag.chars().any(char::is_control) {
        Some("a tag must not contain control characters".into())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(err: ApiError) -> Vec<String> {
        match err {
            ApiError::Unprocessable(errors) => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("expected 422, got {other:?}"),
        }
    }

    #[test]
    fn create_accepts_the_minimum_and_defaults() {
        let task = new_task(&json!({"title": "Buy groceries", "id": 7, "user_id": "x"})).unwrap();
        assert_eq!(task.title, "Buy groceries");
        assert_eq!(task.description, None);
        assert!(!task.completed);
    }

    #[test]
    fn create_reports_every_bad_field() {
        let err =
            new_task(&json!({"title": 5, "description": 1, "completed": "true"})).unwrap_err();
        assert_eq!(fields(err), ["title", "description", "completed"]);
        assert_eq!(fields(new_task(&json!({})).unwrap_err()), ["title"]);
        assert_eq!(fields(new_task(&json!({"title": " \t\n"})).unwrap_err()), ["title"]);
        assert_eq!(fields(new_task(&json!([1])).unwrap_err()), ["body"]);
        let nul = json!({"title": "a\u{0}b", "description": "\u{0}"});
        assert_eq!(fields(new_task(&nul).unwrap_err()), ["title", "description"]);
    }

    #[test]
    fn lengths_count_characters_not_bytes() {
        assert!(new_task(&json!({"title": "é".repeat(200)})).is_ok());
        assert!(new_task(&json!({"title": "é".repeat(201)})).is_err());
        assert!(new_task(&json!({"title": "t", "description": "😀".repeat(1000)})).is_ok());
        assert!(new_task(&json!({"title": "t", "description": "😀".repeat(1001)})).is_err());
    }

    #[test]
    fn priority_due_date_and_tags_are_normalised() {
        let task = new_task(&json!({
            "title": "t",
            "priority": "High",
            "due_date": "2026-12-24",
            "tags": [" Work ", "home", "work"]
        }))
        .unwrap();
        assert_eq!(task.priority, Priority::High);
        assert_eq!(task.due_at.unwrap().to_rfc3339(), "2026-12-24T00:00:00+00:00");
        assert_eq!(task.tags, ["work", "home"]);
        let task = new_task(&json!({"title": "t", "due_date": "2026-12-24T10:00:00+02:00"}));
        assert_eq!(task.unwrap().due_at.unwrap().to_rfc3339(), "2026-12-24T08:00:00+00:00");
        let defaults = new_task(&json!({"title": "t"})).unwrap();
        assert_eq!(
            (defaults.priority, defaults.due_at, defaults.tags),
            (Priority::Medium, None, vec![])
        );
    }

    #[test]
    fn bad_priority_due_date_and_tags_are_named() {
        for (body, field) in [
            (json!({"title": "t", "priority": "highest"}), "priority"),
            (json!({"title": "t", "priority": 2}), "priority"),
            (json!({"title": "t", "due_date": "tomorrow"}), "due_date"),
            (json!({"title": "t", "due_date": "2026-1-2"}), "due_date"),
            (json!({"title": "t", "due_date": "10000-01-01"}), "due_date"),
            (json!({"title": "t", "tags": "work"}), "tags"),
            (json!({"title": "t", "tags": [" "]}), "tags"),
            (json!({"title": "t", "tags": ["x".repeat(33)]}), "tags"),
            (json!({"title": "t", "tags": ["a,b"]}), "tags"),
            (json!({"title": "t", "tags": [1]}), "tags"),
            (
                json!({"title": "t", "tags": (0..21).map(|n| n.to_string()).collect::<Vec<_>>()}),
                "tags",
            ),
        ] {
            assert_eq!(fields(new_task(&body).unwrap_err()), [field], "{body}");
        }
        let same: Vec<String> = (0..30).map(|_| "a".to_owned()).collect();
        assert_eq!(new_task(&json!({"title": "t", "tags": same})).unwrap().tags, ["a"]);
    }

    #[test]
    fn update_needs_a_known_field_and_rejects_null_title() {
        assert_eq!(fields(task_patch(&json!({})).unwrap_err()), ["body"]);
        assert_eq!(fields(task_patch(&json!({"foo": 1})).unwrap_err()), ["body"]);
        assert_eq!(fields(task_patch(&json!({"title": null})).unwrap_err()), ["title"]);
        let patch = task_patch(&json!({"description": ""})).unwrap();
        assert_eq!(patch.description, Some(None));
        let patch = task_patch(&json!({"completed": true})).unwrap();
        assert_eq!(patch.completed, Some(true));
        let patch = task_patch(&json!({"due_date": null, "tags": []})).unwrap();
        assert_eq!((patch.due_at, patch.tags), (Some(None), Some(vec![])));
    }
}
