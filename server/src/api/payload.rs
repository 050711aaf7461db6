//! [`JsonBody`]: a JSON response payload written straight from `serde::Serialize`; and
//! [`TaskArray`], a list of tasks written whole or streamed.
//!
//! poem-openapi's `Json<T>` first builds a `serde_json::Value` (an `IndexMap` per object, a
//! `String` per field) and then serialises that; writing straight from serde took a request
//! from 55 to 52 µs of server CPU (`docs/benchmarks.md`). The document is unchanged: the schema
//! is still `T`'s poem-openapi one, and a unit test checks both encodings agree.

use std::{collections::HashMap, sync::Arc};

use futures::StreamExt as _;
use poem::{Body, IntoResponse, Response, http::header};
use poem_openapi::{
    payload::Payload,
    registry::{MetaSchemaRef, Registry},
    types::Type,
};
use serde::Serialize;

use super::types::TaskView;
use crate::store::{Filter, TaskStore, WHOLE_LIST_MAX};

/// Serialises `T` with serde; documents `T`'s poem-openapi schema as `application/json`.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<T: Type> Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn check_content_type(content_type: &str) -> bool {
        content_type.starts_with("application/json")
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

/// About what a task takes in JSON, with a long title: a body sized for its tasks is written
/// without growing (from serde_json's 128 bytes, a page of 20 tasks grew six times, each a copy).
const TASK_JSON_BYTES: usize = 384;

/// `value` as JSON, into a buffer sized for `tasks` tasks.
fn to_json<T: Serialize>(value: &T, tasks: usize) -> serde_json::Result<Vec<u8>> {
    let mut body = Vec::with_capacity(TASK_JSON_BYTES * tasks.max(1));
    serde_json::to_writer(&mut body, value)?;
    Ok(body)
}

impl<T: Type + Serialize + Send> IntoResponse for JsonBody<T> {
    fn into_response(self) -> Response {
        match to_json(&self.0, 1) {
            Ok(body) => Response::builder()
                .header(header::CONTENT_TYPE, <Self as Payload>::CONTENT_TYPE)
                .body(body),
            // Only a map with non-string keys or a failing `Serialize` impl can get here.
            Err(_) => crate::error::ApiError::Internal.into_response(),
        }
    }
}

/// A JSON array of tasks: written whole, or, for a long list, streamed [`WHOLE_LIST_MAX`] tasks at
/// a time, each chunk read by id from the store as the client takes the previous one: memory
/// stays bounded by a chunk however long the list, and no database connection is held between
/// chunks (a slow reader holds none). The ids are a snapshot of the list's order: a task that
/// exists throughout appears once, in its place, in its state when its chunk is read; one
/// deleted meanwhile is left out.
pub enum TaskArray {
    Whole(Vec<TaskView>),
    Streamed { store: Arc<dyn TaskStore>, owner: Arc<String>, ids: Vec<i64>, filter: Filter },
}

impl Payload for TaskArray {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn check_content_type(content_type: &str) -> bool {
        content_type.starts_with("application/json")
    }

    fn schema_ref() -> MetaSchemaRef {
        Vec::<TaskView>::schema_ref()
    }

    fn register(registry: &mut Registry) {
        Vec::<TaskView>::register(registry);
    }
}

impl IntoResponse for TaskArray {
    fn into_response(self) -> Response {
        let body = match self {
            TaskArray::Whole(tasks) => match to_json(&tasks, tasks.len()) {
                Ok(body) => Body::from(body),
                Err(_) => return crate::error::ApiError::Internal.into_response(),
            },
            TaskArray::Streamed { store, owner, ids, filter } => {
                Body::from_bytes_stream(stream_tasks(store, owner, ids, filter))
            }
        };
        Response::builder().header(header::CONTENT_TYPE, <Self as Payload>::CONTENT_TYPE).body(body)
    }
}

/// `[`, the tasks chunk by chunk, `]`. A failure mid-way ends the body early (the status line
/// is long gone): the client sees a truncated response, never a wrong one.
fn stream_tasks(
    store: Arc<dyn TaskStore>,
    owner: Arc<String>,
    ids: Vec<i64>,
    filter: Filter,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    struct Reading {
        store: Arc<dyn TaskStore>,
        owner: Arc<String>,
        filter: Filter,
        chunks: std::vec::IntoIter<Vec<i64>>,
        /// Whether a task has been written (the next one needs a comma).
        written: bool,
        /// `]` written, or the stream failed.
        done: bool,
    }
    let chunks: Vec<Vec<i64>> = ids.chunks(WHOLE_LIST_MAX as usize).map(<[i64]>::to_vec).collect();
    let reading =
        Reading { store, owner, filter, chunks: chunks.into_iter(), written: false, done: false };
    let opening = futures::stream::once(async { Ok(b"[".to_vec()) });
    let rest = futures::stream::unfold(reading, |mut reading| async move {
        if reading.done {
            return None;
        }
        let Some(chunk) = reading.chunks.next() else {
            reading.done = true;
            return Some((Ok(b"]".to_vec()), reading));
        };
        let found = reading.store.tasks_by_id(&reading.owner, &chunk, &reading.filter).await;
        let mut found: HashMap<i64, TaskView> = match found {
            Ok(tasks) => tasks
                .into_iter()
                .map(|task| (task.id, TaskView::new(task, &reading.owner)))
                .collect(),
            Err(err) => {
                tracing::warn!(error = %err, "a streamed list ended early");
                reading.done = true;
                return Some((Err(std::io::Error::other("the list could not be read")), reading));
            }
        };
        let mut bytes = Vec::with_capacity(chunk.len() * TASK_JSON_BYTES);
        for task in chunk.iter().filter_map(|id| found.remove(id)) {
            if reading.written {
                bytes.push(b',');
            }
            reading.written = true;
            if let Err(err) = serde_json::to_writer(&mut bytes, &task) {
                reading.done = true;
                return Some((Err(std::io::Error::other(err)), reading));
            }
        }
        Some((Ok(bytes), reading))
    });
    opening.chain(rest)
}

#[cfg(test)]
mod tests {
    use poem_openapi::types::{Example, ToJSON};

    use super::super::types::TaskView;

    /// What is sent (serde) must be what is documented (poem-openapi's encoding of the schema).
    #[test]
    fn serde_and_poem_openapi_agree() {
        let with_description = TaskView::example();
        let mut without = TaskView::example();
        without.description = None;
        without.title = "quotes \" and \\ and ünïcode ✓ and \u{1}".into();
        for view in [with_description, without] {
            assert_eq!(serde_json::to_value(&view).unwrap(), view.to_json().unwrap());
            let list = vec![view.clone(), view];
            assert_eq!(serde_json::to_value(&list).unwrap(), list.to_json().unwrap());
        }
    }
}
