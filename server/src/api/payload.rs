//! [`JsonBody`]: a JSON response payload written straight from `serde::Serialize`, or for a
//! task by hand ([`WriteJson`]); and [`TaskArray`], a list of tasks written whole or streamed.
//!
//! poem-openapi's `Json<T>` first builds a `serde_json::Value` (an `IndexMap` per object, a
//! `String` per field) and then serialises that; writing straight from serde took a request
//! from 55 to 52 µs of server CPU (`docs/benchmarks.md`). The document is unchanged: the schema
//! is still `T`'s poem-openapi one, and unit tests check that the encodings agree.

use std::{borrow::Borrow, collections::HashMap, sync::Arc};

use futures::StreamExt as _;
use poem::{Body, IntoResponse, Response, http::header};
use poem_openapi::{
    payload::Payload,
    registry::{MetaSchemaRef, Registry},
    types::Type,
};

use super::types::TaskView;
use crate::store::{Filter, TaskStore, WHOLE_LIST_MAX};

/// Writes `T` as JSON ([`WriteJson`]); documents `T`'s poem-openapi schema as
/// `application/json`.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

/// How a response body is written as JSON: the bytes of `T`'s `serde::Serialize`.
pub trait WriteJson {
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()>;
}

impl WriteJson for super::changes::ChangeBatchView {
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        serde_json::to_writer(out, self)
    }
}

/// A task, the body written most (twenty to a page), with its keys written as the literals they
/// are: serde_json scans every key for characters to escape, as it does any string, and that
/// was a third of the instructions spent writing a task (`docs/benchmarks.md`, issue 19 step
/// 13). The values still go through serde_json, but for the timestamps, whose spelling has
/// nothing to escape. `hand_written_tasks_are_what_serde_writes` holds the bytes equal to
/// serde's.
impl WriteJson for TaskView {
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        // Every field named, none skipped: a new one does not compile until it is written here.
        let TaskView {
            id,
            user_id,
            title,
            description,
            completed,
            priority,
            due_date,
            tags,
            created_at,
            updated_at,
        } = self;
        out.extend_from_slice(b"{\"id\":");
        serde_json::to_writer(&mut *out, id)?;
        out.extend_from_slice(b",\"user_id\":");
        serde_json::to_writer(&mut *out, user_id.as_str())?;
        out.extend_from_slice(b",\"title\":");
        serde_json::to_writer(&mut *out, title)?;
        out.extend_from_slice(b",\"description\":");
        serde_json::to_writer(&mut *out, description)?;
        out.extend_from_slice(if *completed {
            b",\"completed\":true"
        } else {
            b",\"completed\":false"
        });
        out.extend_from_slice(b",\"priority\":");
        serde_json::to_writer(&mut *out, priority)?;
        out.extend_from_slice(b",\"due_date\":");
        match due_date {
            Some(due_date) => due_date.write_json(out),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"tags\":");
        serde_json::to_writer(&mut *out, tags)?;
        out.extend_from_slice(b",\"created_at\":");
        created_at.write_json(out);
        out.extend_from_slice(b",\"updated_at\":");
        updated_at.write_json(out);
        out.push(b'}');
        Ok(())
    }
}

/// `tasks` as a JSON array, appended to `out`; `written`: whether a task precedes them.
fn write_tasks(
    out: &mut Vec<u8>,
    tasks: impl IntoIterator<Item = impl Borrow<TaskView>>,
    written: &mut bool,
) -> serde_json::Result<()> {
    for task in tasks {
        if *written {
            out.push(b',');
        }
        *written = true;
        task.borrow().write_json(out)?;
    }
    Ok(())
}

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

/// The body of `write`, into a buffer sized for `tasks` tasks.
fn to_json(
    tasks: usize,
    write: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>,
) -> serde_json::Result<Vec<u8>> {
    let mut body = Vec::with_capacity(TASK_JSON_BYTES * tasks.max(1));
    write(&mut body)?;
    Ok(body)
}

impl<T: Type + WriteJson + Send> IntoResponse for JsonBody<T> {
    fn into_response(self) -> Response {
        match to_json(1, |body| self.0.write_json(body)) {
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
            TaskArray::Whole(tasks) => match to_json(tasks.len(), |body| {
                body.push(b'[');
                write_tasks(body, &tasks, &mut false)?;
                body.push(b']');
                Ok(())
            }) {
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
        let in_order = chunk.iter().filter_map(|id| found.remove(id));
        if let Err(err) = write_tasks(&mut bytes, in_order, &mut reading.written) {
            reading.done = true;
            return Some((Err(std::io::Error::other(err)), reading));
        }
        Some((Ok(bytes), reading))
    });
    opening.chain(rest)
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use poem_openapi::types::{Example, ToJSON};

    use super::super::types::{PriorityName, TaskView, Timestamp};
    use super::{WriteJson as _, write_tasks};

    /// Tasks of every shape: each priority, with and without a description, a due date and
    /// tags, strings that need escaping, times at the edges of the spelling.
    fn tasks() -> Vec<TaskView> {
        let hostile = "quotes \" and \\ and ünïcode ✓, </script>, \u{1}\u{1f}\u{7f} and \u{2028}";
        let priorities =
            [PriorityName::Low, PriorityName::Medium, PriorityName::High, PriorityName::Urgent];
        let times = [0, 1_767_952_800_123_456, -62_135_596_800_000_000, 253_402_300_799_999_999];
        let mut tasks = Vec::new();
        for (i, priority) in priorities.into_iter().enumerate() {
            let mut task = TaskView::example();
            task.id = [0, 1, i64::MAX, i64::MIN][i];
            task.priority = priority;
            task.completed = i % 2 == 0;
            task.created_at = Timestamp(DateTime::from_timestamp_micros(times[i]).unwrap());
            // Years past 9999 and before 0: chrono's spelling, not the one on the stack.
            let outside = [253_402_300_800_000_000, -62_198_755_200_000_000][i % 2];
            task.updated_at = Timestamp(DateTime::from_timestamp_micros(outside).unwrap());
            if i % 2 == 1 {
                task.description = None;
                task.due_date = None;
                task.tags = Vec::new();
                task.title = hostile.into();
                task.user_id = std::sync::Arc::new(hostile.into());
            } else {
                task.description = Some(hostile.into());
                task.tags = vec![hostile.into(), "home".into()];
            }
            tasks.push(task);
        }
        tasks
    }

    #[test]
    fn hand_written_tasks_are_what_serde_writes() {
        for task in tasks() {
            let mut written = Vec::new();
            task.write_json(&mut written).unwrap();
            assert_eq!(String::from_utf8(written).unwrap(), serde_json::to_string(&task).unwrap());
        }
        let mut list = b"[".to_vec();
        write_tasks(&mut list, tasks(), &mut false).unwrap();
        list.push(b']');
        assert_eq!(String::from_utf8(list).unwrap(), serde_json::to_string(&tasks()).unwrap());
    }

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
