//! The task operations, served under two path styles: `/api/tasks…`, where the owner is the
//! token's subject, and `/api/{user_id}/tasks…` (what the original frontend calls), where the
//! security scheme has already answered 403 unless `{user_id}` is that subject.
//!
//! The OpenAPI document needs each style as separate operations (own paths and operationIds),
//! so `task_operations!` declares the eight operations once and is expanded for each style; every
//! operation is a one-line call into the shared functions below it.

use std::sync::Arc;

use poem::{Request, web::Data};
use poem_openapi::{
    OpenApi,
    param::{Header, Path, Query},
    payload::Json,
};

use super::{
    ApiTags,
    changes::{self, ChangesLimit, ChangesResponse},
    conditional::{etag, none_match, precondition, written},
    cursor,
    events::{self, EventsResponse},
    idempotency::{self, Begun, Keyed, Operation},
    payload::{JsonBody, TaskArray},
    security::{BearerAuth, Caller, UserPathBearerAuth},
    types::{
        DeletedResponse, GetTaskResponse, JsonObject, Limit, Offset, OrderParam, SortParam,
        StatusParam, TaskCreateSchema, TaskCreatedResponse, TaskListResponse, TaskResponse,
        TaskUpdateSchema, TaskView,
    },
    validation,
};
use crate::{
    AppState,
    error::{ApiError, FieldError},
    limits::SEARCH_MAX_CHARS,
    store::{self, Filter, ListQuery, Priority, SortKey, SortOrder, StatusFilter, Task, Writes},
};
use serde_json::Value;

type CreateBody = Json<JsonObject<TaskCreateSchema>>;
type UpdateBody = Json<JsonObject<TaskUpdateSchema>>;

/// Declares the eight task operations for one path style: `$api` is the type, then its five
/// paths (collection, item, completion toggle, change feed, live events), tag, security extractor and
/// operationIds;
/// `path_user` marks the style whose paths hold `:user_id`. (Not `prefix_path`: poem-openapi would document the prefix
/// as `/api/:user_id` instead of `/api/{user_id}`.)
/// (Literals are taken as `tt` so that poem-openapi's attribute parser sees plain literals.)
macro_rules! task_operations {
    (
        $api:ident,
        paths: [$collection:tt, $item:tt, $complete:tt, $changes:tt, $events:tt],
        tag: $tag:tt,
        auth: $auth:ident,
        operation_ids: [
            $list:tt, $create:tt, $get:tt, $update:tt, $toggle:tt, $delete:tt, $feed:tt,
            $live:tt
        ]
        $(, path_user: $user_id:ident)? $(,)?
    ) => {
        pub struct $api;

        #[OpenApi(tag = $tag)]
        impl $api {
            /// List tasks
            ///
            /// Without parameters: every task of the caller, oldest first, as a plain array.
            /// The filters (`status` or `completed`, `search` or `q`, `priority`, `tag`,
            /// `due_after`, `due_before`, `overdue`) combine: a task is listed when it matches
            /// all of them. `sort` and `order` reorder (ties broken by id), `limit` and `offset`
            /// page, and `Link: rel="next"` (`after`) walks a long list page by page.
            /// `X-Total-Count` is the number of matching tasks before paging. A parameter that
            /// does not parse is a 400; one out of range, or two that disagree, a 422.
            #[oai(path = $collection, method = "get", operation_id = $list)]
            #[allow(clippy::too_many_arguments)]
            async fn list(
                &self,
                auth: $auth,
                $(
                    /// The caller's own user id (the token's subject); any other is a 403.
                    $user_id: Path<String>,
                )?
                state: Data<&AppState>,
                /// Which tasks: `all`, `pending` (not completed) or `completed`.
                #[oai(default)]
                status: Query<StatusParam>,
                /// `true` is `status=completed`, `false` is `status=pending`.
                completed: Query<Option<bool>>,
                /// Tasks whose title or description contains this, in any letter case
                /// (1 to 100 characters).
                search: Query<Option<String>>,
                /// The same as `search`.
                q: Query<Option<String>>,
                /// Tasks of this priority, or of any of a comma-separated list
                /// (`high,urgent`), in any letter case.
                priority: Query<Option<String>>,
                /// Tasks carrying this tag (in any letter case); repeated or comma-separated,
                /// tasks carrying all of them.
                tag: Query<Option<Vec<String>>>,
                /// Tasks due at or after this time: an RFC 3339 date-time, or a date
                /// (`2026-12-24`: that day at 00:00 UTC).
                due_after: Query<Option<String>>,
                /// Tasks due before this time (a date-time or a date, like `due_after`).
                due_before: Query<Option<String>>,
                /// `true`: tasks due before now and not completed.
                overdue: Query<Option<bool>>,
                /// Order by `created` (`created_at`, the default), `updated` (`updated_at`),
                /// `title`, `due_date` (tasks without one last, in either order) or `priority`
                /// (`desc`: urgent first); ties are broken by `id`, so pages never overlap.
                sort: Query<Option<SortParam>>,
                /// The same as `sort`.
                sort_by: Query<Option<SortParam>>,
                /// `asc` (the default: oldest, A or low first) or `desc`.
                order: Query<Option<OrderParam>>,
                /// The same as `order`.
                sort_order: Query<Option<OrderParam>>,
                /// At most this many tasks; without it, all of them.
                limit: Query<Option<Limit>>,
                /// Skip this many matching tasks first. Deep offsets walk every task they
                /// skip: to go through a long list, follow `Link: rel="next"` (`after`) instead.
                #[oai(default)]
                offset: Query<Offset>,
                /// Start after this position: the cursor in the previous page's
                /// `Link: rel="next"` header. Opaque, and only valid with the same `sort` and
                /// `order`; a page costs the same wherever it starts.
                after: Query<Option<String>>,
                req: &Request,
            ) -> Result<TaskListResponse, ApiError> {
                $( let _ = $user_id; )?
                let query = list_query(ListParams {
                    status: status.0,
                    completed: completed.0,
                    search: search.0,
                    q: q.0,
                    priority: priority.0,
                    tags: tag.0.unwrap_or_default(),
                    due_after: due_after.0,
                    due_before: due_before.0,
                    overdue: overdue.0,
                    sort: sort.0,
                    sort_by: sort_by.0,
                    order: order.0,
                    sort_order: sort_order.0,
                    limit: limit.0,
                    offset: offset.0,
                    after: after.0,
                })?;
                list(&state, &auth.0, req, query).await
            }

            /// Create a task
            ///
            /// The owner is the token's subject; `id`, `user_id` and timestamps in the body are
            /// ignored, as are unknown fields. `Location` is the new task's URL.
            #[oai(path = $collection, method = "post", operation_id = $create)]
            async fn create(
                &self,
                auth: $auth,
                $(
                    /// The caller's own user id (the token's subject); any other is a 403.
                    $user_id: Path<String>,
                )?
                state: Data<&AppState>,
                req: &Request,
                /// Makes retrying this request safe.
                #[oai(name = "Idempotency-Key")]
                idempotency_key: Header<Option<String>>,
                body: CreateBody,
            ) -> Result<Keyed<TaskCreatedResponse>, ApiError> {
                $( let _ = $user_id; )?
                create(&state, &auth.0, req, idempotency_key.as_deref(), &body).await
            }

            /// Get a task
            ///
            /// 404 when it does not exist or belongs to someone else (the two look the same).
            #[oai(path = $item, method = "get", operation_id = $get)]
            async fn get(
                &self,
                auth: $auth,
                $(
                    /// The caller's own user id (the token's subject); any other is a 403.
                    $user_id: Path<String>,
                )?
                id: Path<i64>,
                state: Data<&AppState>,
                /// ETags the caller already has: a match answers 304 with no body.
                #[oai(name = "If-None-Match")]
                if_none_match: Header<Option<String>>,
            ) -> Result<GetTaskResponse, ApiError> {
                $( let _ = $user_id; )?
                get(&state, &auth.0, id.0, if_none_match.as_deref()).await
            }

            /// Update a task
            ///
            /// Partial: only the fields present change (at least one of `title`,
            /// `description`, `completed`); `description: null` or `""` clears it;
            /// `updated_at` moves forward.
            #[oai(path = $item, method = "put", operation_id = $update)]
            #[allow(clippy::too_many_arguments)]
            async fn update(
                &self,
                auth: $auth,
                $(
                    /// The caller's own user id (the token's subject); any other is a 403.
                    $user_id: Path<String>,
                )?
                id: Path<i64>,
                state: Data<&AppState>,
                /// Update only if the task's `ETag` is one of these (`*`: any); else 412.
                #[oai(name = "If-Match")]
                if_match: Header<Option<String>>,
                /// Makes retrying this request safe.
                #[oai(name = "Idempotency-Key")]
                idempotency_key: Header<Option<String>>,
                body: UpdateBody,
            ) -> Result<Keyed<TaskResponse>, ApiError> {
                $( let _ = $user_id; )?
                let conditions = Conditions { if_match: if_match.as_deref(), idempotency_key: idempotency_key.as_deref() };
                update(&state, &auth.0, id.0, conditions, &body).await
            }

            /// Toggle a task's completion
            ///
            /// Flips `completed` atomically in the database, so N concurrent toggles give N
            /// distinct consecutive states. Takes no body (one sent is ignored).
            #[oai(path = $complete, method = "patch", operation_id = $toggle)]
            async fn toggle(
                &self,
                auth: $auth,
                $(
                    /// The caller's own user id (the token's subject); any other is a 403.
                    $user_id: Path<String>,
                )?
                id: Path<i64>,
                state: Data<&AppState>,
                /// Toggle only if the task's `ETag` is one of these (`*`: any); else 412.
                #[oai(name = "If-Match")]
                if_match: Header<Option<String>>,
                /// Makes retrying this request safe.
                #[oai(name = "Idempotency-Key")]
                idempotency_key: Header<Option<String>>,
            ) -> Result<Keyed<TaskResponse>, ApiError> {
                $( let _ = $user_id; )?
                let conditions = Conditions { if_match: if_match.as_deref(), idempotency_key: idempotency_key.as_deref() };
                toggle(&state, &auth.0, id.0, conditions).await
            }

            /// Delete a task
            ///
            /// 204 with an empty body; 404 when it does not exist or belongs to someone else.
            #[oai(path = $item, method = "delete", operation_id = $delete)]
            async fn delete(
                &self,
                auth: $auth,
                $(
                    /// The caller's own user id (the token's subject); any other is a 403.
                    $user_id: Path<String>,
                )?
                id: Path<i64>,
                state: Data<&AppState>,
                /// Delete only if the task's `ETag` is one of these (`*`: any); else 412.
                #[oai(name = "If-Match")]
                if_match: Header<Option<String>>,
                /// Makes retrying this request safe.
                #[oai(name = "Idempotency-Key")]
                idempotency_key: Header<Option<String>>,
            ) -> Result<Keyed<DeletedResponse>, ApiError> {
                $( let _ = $user_id; )?
                let conditions = Conditions { if_match: if_match.as_deref(), idempotency_key: idempotency_key.as_deref() };
                delete(&state, &auth.0, id.0, conditions).await
            }

            /// Sync: what changed since a cursor
            ///
            /// The caller's changes after `since`, in the order they were committed: `upsert`
            /// (a task created or modified, in its state now) and `delete` (its id). Without
            /// `since`, every task as an upsert (a full sync). Apply them to a local copy and
            /// keep `cursor` for next time; while `more` is true, ask again at once. A cursor
            /// older than the deletions the service keeps is a 410: sync again without it.
            #[oai(path = $changes, method = "get", operation_id = $feed)]
            async fn changes(
                &self,
                auth: $auth,
                $(
                    /// The caller's own user id (the token's subject); any other is a 403.
                    $user_id: Path<String>,
                )?
                state: Data<&AppState>,
                /// The `cursor` of an earlier answer; without it, a full sync.
                since: Query<Option<String>>,
                /// At most this many changes in one answer.
                #[oai(default = "changes::default_limit")]
                limit: Query<ChangesLimit>,
            ) -> Result<ChangesResponse, ApiError> {
                $( let _ = $user_id; )?
                changes::read(&state, &auth.0, since.as_deref(), limit.0).await
            }

            /// Live: changes as they happen (server-sent events)
            ///
            /// A `text/event-stream` of the caller's changes, each as it is committed through
            /// any instance: `id:` a cursor, `event: upsert` or `delete`, `data:` the change as
            /// in `/changes`. With `Last-Event-ID` (or `since`), the changes after that cursor
            /// come first, then live ones, with none lost or repeated in between; without,
            /// only new ones. `event: resync` ends a stream whose cursor is too old. The stream
            /// ends when the token expires: reconnect with a fresh token and `Last-Event-ID`.
            /// At most `EVENT_STREAMS_PER_USER` (default 8) streams per user per instance: one
            /// more is a 429. Browsers send the token with a fetch-based event-source client.
            #[oai(path = $events, method = "get", operation_id = $live)]
            async fn events(
                &self,
                auth: $auth,
                $(
                    /// The caller's own user id (the token's subject); any other is a 403.
                    $user_id: Path<String>,
                )?
                state: Data<&AppState>,
                /// The `id` of the last event received: resume after it.
                #[oai(name = "Last-Event-ID")]
                last_event_id: Header<Option<String>>,
                /// A cursor from `/changes` (or an event's `id`) to start after;
                /// `Last-Event-ID` wins.
                since: Query<Option<String>>,
            ) -> Result<EventsResponse, ApiError> {
                $( let _ = $user_id; )?
                events::open(&state, &auth.0, last_event_id.as_deref(), since.as_deref()).await
            }
        }
    };
}

task_operations!(
    TasksApi,
    paths: [
        "/api/tasks",
        "/api/tasks/:id",
        "/api/tasks/:id/complete",
        "/api/tasks/changes",
        "/api/tasks/events"
    ],
    tag: "ApiTags::Tasks",
    auth: BearerAuth,
    operation_ids: [
        "list_tasks",
        "create_task",
        "get_task",
        "update_task",
        "toggle_task",
        "delete_task",
        "list_changes",
        "follow_changes"
    ],
);

task_operations!(
    UserTasksApi,
    paths: [
        "/api/:user_id/tasks",
        "/api/:user_id/tasks/:id",
        "/api/:user_id/tasks/:id/complete",
        "/api/:user_id/tasks/changes",
        "/api/:user_id/tasks/events"
    ],
    tag: "ApiTags::UserTasks",
    auth: UserPathBearerAuth,
    operation_ids: [
        "list_user_tasks",
        "create_user_task",
        "get_user_task",
        "update_user_task",
        "toggle_user_task",
        "delete_user_task",
        "list_user_changes",
        "follow_user_changes"
    ],
    path_user: user_id,
);

/// The error statuses each task operation can answer, by its `/api/tasks…` operationId (the
/// `/api/{user_id}/tasks…` twin adds 403 where it is missing; a write's 403 is a cross-site
/// cookie write, `AUTH_COOKIES=on`). `api::spec` documents exactly these, and the test
/// harness fails any response whose status the document does not list.
pub(super) const ERROR_STATUSES: [(&str, &[u16]); 8] = [
    ("list_tasks", &[400, 401, 422, 429, 500, 503]),
    ("create_task", &[400, 401, 403, 409, 413, 415, 422, 429, 500, 503]),
    ("get_task", &[400, 401, 404, 429, 500, 503]),
    ("update_task", &[400, 401, 403, 404, 409, 412, 413, 415, 422, 429, 500, 503]),
    ("toggle_task", &[400, 401, 403, 404, 409, 412, 422, 429, 500, 503]),
    ("delete_task", &[400, 401, 403, 404, 409, 412, 422, 429, 500, 503]),
    ("list_changes", &[400, 401, 410, 422, 429, 500, 503]),
    ("follow_changes", &[400, 401, 429, 500, 503]),
];

/// The operations that take an `Idempotency-Key`, by their `/api/tasks…` operationId.
pub(super) const KEYED_OPERATIONS: [&str; 4] =
    ["create_task", "update_task", "toggle_task", "delete_task"];

/// The request headers that make a write conditional or keyed.
#[derive(Debug, Clone, Copy)]
struct Conditions<'a> {
    if_match: Option<&'a str>,
    idempotency_key: Option<&'a str>,
}

/// A listing's query parameters as they came (see the `list` operation).
struct ListParams {
    status: StatusParam,
    completed: Option<bool>,
    search: Option<String>,
    q: Option<String>,
    priority: Option<String>,
    tags: Vec<String>,
    due_after: Option<String>,
    due_before: Option<String>,
    overdue: Option<bool>,
    sort: Option<SortParam>,
    sort_by: Option<SortParam>,
    order: Option<OrderParam>,
    sort_order: Option<OrderParam>,
    limit: Option<Limit>,
    offset: Offset,
    after: Option<String>,
}

/// The listing the parameters ask for: 400 for a value that does not parse, 422 (every field
/// at once) for one out of range or two that disagree.
fn list_query(params: ListParams) -> Result<ListQuery, ApiError> {
    let mut errors = Vec::new();
    // (`created` and `created_at` are one order: compared as the store's keys.)
    let (sort, sort_by) = (params.sort.map(SortKey::from), params.sort_by.map(SortKey::from));
    let sort = agreed("sort", sort, "sort_by", sort_by, &mut errors).unwrap_or_default();
    let (order, alias) =
        (params.order.map(SortOrder::from), params.sort_order.map(SortOrder::from));
    let order = agreed("order", order, "sort_order", alias, &mut errors).unwrap_or_default();
    let due_after = due_time("due_after", params.due_after)?;
    let due_before = due_time("due_before", params.due_before)?;
    let after = params.after.map(|text| cursor::decode(&text, sort, order)).transpose()?;

    let status = match (params.status, params.completed) {
        (status, None) => status.into(),
        (StatusParam::All | StatusParam::Completed, Some(true)) => StatusFilter::Completed,
        (StatusParam::All | StatusParam::Pending, Some(false)) => StatusFilter::Pending,
        (status, Some(_)) => {
            errors.push(FieldError::new("completed", "disagrees with `status`"));
            status.into()
        }
    };
    let search = agreed("search", params.search, "q", params.q, &mut errors);
    if let Some(search) = &search {
        let length = search.chars().count();
        if !(1..=SEARCH_MAX_CHARS).contains(&length) || search.contains('\0') {
            let message = format!("must be 1 to {SEARCH_MAX_CHARS} characters, without NUL");
            errors.push(FieldError::new("search", message));
        }
    }
    let mut priorities = Vec::new();
    for name in params.priority.iter().flat_map(|list| list.split(',')) {
        match Priority::parse(name.trim()) {
            Some(priority) if !priorities.contains(&priority) => priorities.push(priority),
            Some(_) => {}
            None => {
                let message = "each must be one of low, medium, high, urgent";
                errors.push(FieldError::new("priority", message));
                break;
            }
        }
    }
    let mut tags: Vec<String> = Vec::new();
    for tag in params.tags.iter().flat_map(|list| list.split(',')) {
        let tag = tag.trim().to_lowercase();
        if let Some(problem) = validation::tag_problem(&tag) {
            errors.push(FieldError::new("tag", problem));
            break;
        }
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    let mut check = |field: &str, value: Result<i64, String>| {
        value.map_err(|message| errors.push(FieldError::new(field, message))).ok()
    };
    let limit = params.limit.and_then(|limit| check("limit", limit.checked()));
    let offset = check("offset", params.offset.checked());
    if !errors.is_empty() {
        return Err(ApiError::Unprocessable(errors));
    }
    let filter = Filter {
        status,
        search,
        priorities,
        tags,
        due_after,
        due_before,
        overdue_at: params.overdue.unwrap_or(false).then(chrono::Utc::now),
    };
    Ok(ListQuery { filter, sort, order, limit, offset: offset.unwrap_or(0), after })
}

/// `due_after` or `due_before`: a date-time or a date, else a 400.
fn due_time(
    name: &str,
    text: Option<String>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    let Some(text) = text else { return Ok(None) };
    match validation::date_or_date_time(&text) {
        Some(at) if store::storable(&at) => Ok(Some(at)),
        _ => Err(ApiError::BadRequest(format!(
            "`{name}` must be an RFC 3339 date-time or a date (YYYY-MM-DD)"
        ))),
    }
}

/// A parameter given under two names: either, or both if they agree (else a 422 on the alias).
fn agreed<T: PartialEq>(
    name: &str,
    value: Option<T>,
    alias: &str,
    alias_value: Option<T>,
    errors: &mut Vec<FieldError>,
) -> Option<T> {
    match (value, alias_value) {
        (Some(value), Some(other)) if value != other => {
            errors.push(FieldError::new(alias, format!("disagrees with `{name}`")));
            Some(value)
        }
        (value, other) => value.or(other),
    }
}

async fn list(
    state: &AppState,
    caller: &Caller,
    req: &Request,
    query: ListQuery,
) -> Result<TaskListResponse, ApiError> {
    let page = state.store.list(&caller.user_id, &query).await?;
    let next = page
        .next
        .as_ref()
        .map(|next| cursor::next_link(req.uri().path(), req.uri().query(), &query, next));
    let tasks = match page.ids {
        Some(ids) => TaskArray::Streamed {
            store: state.store.clone(),
            owner: caller.user_id.clone(),
            ids,
            filter: query.filter,
        },
        None => TaskArray::Whole(
            page.tasks.into_iter().map(|task| TaskView::new(task, &caller.user_id)).collect(),
        ),
    };
    Ok(TaskListResponse::Ok(tasks, page.total, next))
}

/// Each write: its key looked at, its writes run, its outcome kept ([`idempotency`]).
async fn create(
    state: &AppState,
    caller: &Caller,
    req: &Request,
    idempotency_key: Option<&str>,
    body: &CreateBody,
) -> Result<Keyed<TaskCreatedResponse>, ApiError> {
    let body = &body.0.value;
    let operation = Operation::Create;
    let mut session =
        match idempotency::begin(state, caller, idempotency_key, operation, Some(body)).await? {
            Begun::Run(session) => session,
            Begun::Replay(kept) => return Ok(kept.into()),
        };
    let outcome = create_task(session.writes(), &caller.user_id, req, body).await;
    session.finish(outcome).await
}

async fn create_task(
    writes: &mut dyn Writes,
    owner: &Arc<String>,
    req: &Request,
    body: &Value,
) -> Result<TaskCreatedResponse, ApiError> {
    let new_task = validation::new_task(body)?;
    let task = writes.create(&new_task).await?;
    // The new task's URL in the style of the collection it was posted to.
    let location = format!("{}/{}", req.uri().path().trim_end_matches('/'), task.id);
    let etag = etag(&task);
    Ok(TaskCreatedResponse::Created(JsonBody(TaskView::new(task, owner)), location, etag))
}

async fn get(
    state: &AppState,
    caller: &Caller,
    id: i64,
    if_none_match: Option<&str>,
) -> Result<GetTaskResponse, ApiError> {
    let task = state.store.get(&caller.user_id, id).await?.ok_or(ApiError::TASK_NOT_FOUND)?;
    let etag = etag(&task);
    if none_match(if_none_match, &etag) {
        return Ok(GetTaskResponse::NotModified(etag));
    }
    Ok(GetTaskResponse::Ok(JsonBody(TaskView::new(task, &caller.user_id)), etag))
}

async fn update(
    state: &AppState,
    caller: &Caller,
    id: i64,
    conditions: Conditions<'_>,
    body: &UpdateBody,
) -> Result<Keyed<TaskResponse>, ApiError> {
    let body = &body.0.value;
    let key = conditions.idempotency_key;
    let mut session =
        match idempotency::begin(state, caller, key, Operation::Update(id), Some(body)).await? {
            Begun::Run(session) => session,
            Begun::Replay(kept) => return Ok(kept.into()),
        };
    let outcome =
        update_task(session.writes(), &caller.user_id, id, conditions.if_match, body).await;
    session.finish(outcome).await
}

async fn update_task(
    writes: &mut dyn Writes,
    owner: &Arc<String>,
    id: i64,
    if_match: Option<&str>,
    body: &Value,
) -> Result<TaskResponse, ApiError> {
    let patch = validation::task_patch(body)?;
    let outcome = writes.update(id, &patch, &precondition(if_match)).await?;
    Ok(task_response(written(outcome)?, owner))
}

async fn toggle(
    state: &AppState,
    caller: &Caller,
    id: i64,
    conditions: Conditions<'_>,
) -> Result<Keyed<TaskResponse>, ApiError> {
    let key = conditions.idempotency_key;
    let mut session =
        match idempotency::begin(state, caller, key, Operation::Toggle(id), None).await? {
            Begun::Run(session) => session,
            Begun::Replay(kept) => return Ok(kept.into()),
        };
    let outcome = session.writes().toggle_completed(id, &precondition(conditions.if_match)).await;
    let outcome = outcome.map_err(ApiError::from).and_then(written);
    let outcome = outcome.map(|task| task_response(task, &caller.user_id));
    session.finish(outcome).await
}

async fn delete(
    state: &AppState,
    caller: &Caller,
    id: i64,
    conditions: Conditions<'_>,
) -> Result<Keyed<DeletedResponse>, ApiError> {
    let key = conditions.idempotency_key;
    let mut session =
        match idempotency::begin(state, caller, key, Operation::Delete(id), None).await? {
            Begun::Run(session) => session,
            Begun::Replay(kept) => return Ok(kept.into()),
        };
    let outcome = session.writes().delete(id, &precondition(conditions.if_match)).await;
    let outcome = outcome.map_err(ApiError::from).and_then(written);
    session.finish(outcome.map(|()| DeletedResponse::NoContent)).await
}

fn task_response(task: Task, owner: &Arc<String>) -> TaskResponse {
    let etag = etag(&task);
    TaskResponse::Ok(JsonBody(TaskView::new(task, owner)), etag)
}
