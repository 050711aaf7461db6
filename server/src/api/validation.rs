//! Request bodies → validated domain values, with every invalid field reported at once (422).
//! Types are strict: `"title": 5` or `"completed": "true"` are errors, not coerced.

use serde_json::{Map, Value};

use crate::{
    error::{ApiError, FieldError},
    limits::{DESCRIPTION_MAX_CHARS, TITLE_MAX_CHARS},
    store::{NewTask, TaskPatch},
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
    match title {
        Some(title) if errors.is_empty() => Ok(NewTask {
            title,
            description: description.flatten(),
            completed: completed.unwrap_or(false),
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
    };
    if !errors.is_empty() {
        return Err(ApiError::Unprocessable(errors));
    }
    if patch == TaskPatch::default() {
        return Err(ApiError::Unprocessable(vec![FieldError::new(
            "body",
            "must contain at least one of title, description, completed",
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
    fn update_needs_a_known_field_and_rejects_null_title() {
        assert_eq!(fields(task_patch(&json!({})).unwrap_err()), ["body"]);
        assert_eq!(fields(task_patch(&json!({"foo": 1})).unwrap_err()), ["body"]);
        assert_eq!(fields(task_patch(&json!({"title": null})).unwrap_err()), ["title"]);
        let patch = task_patch(&json!({"description": ""})).unwrap();
        assert_eq!(patch.description, Some(None));
        let patch = task_patch(&json!({"completed": true})).unwrap();
        assert_eq!(patch.completed, Some(true));
    }
}
