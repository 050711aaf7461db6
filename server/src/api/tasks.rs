//! The task operations, served under two path styles: `/api/tasks…`, where the owner is the
//! token's subject, and `/api/{user_id}/tasks…` (what the original frontend calls), where the
//! security scheme has already answered 403 unless `{user_id}` is that subject.
//!
//! The OpenAPI document needs each style as separate operations (own paths and operationIds),
//! so `task_operations!` declares the six operations once and is expanded for each style; every
//! operation is a one-line call into the shared functions below it.

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
    idempotency::{self, Begun, Keyed, Operation},
    payload::{JsonBody, TaskArray},
    security::{BearerAuth, Caller, UserPathBearerAuth},
    types::{
        DeletedResponse, GetTaskResponse, JsonObject, Limit, Offset, OrderParam, SortParam,
        StatusParam, TaskCreateSchema, TaskCreatedResponse, TaskListResponse, TaskResponse,
        TaskUpdateSchema,
    },
    validation,
};
use crate::{
    AppState,
    error::{ApiError, FieldError},
    store::{ListQuery, Task, Writes},
};
use serde_json::Value;

type CreateBody = Json<JsonObject<TaskCreateSchema>>;
type UpdateBody = Json<JsonObject<TaskUpdateSchema>>;

/// Declares the seven task operations for one path style: `$api` is the type, then its four
/// paths (collection, item, completion toggle, change feed), tag, security extractor and
/// operationIds;
/// `path_user` marks the style whose paths hold `:user_id`. (Not `prefix_path`: poem-openapi would document the prefix
/// as `/api/:user_id` instead of `/api/{user_id}`.)
/// (Literals are taken as `tt` so that poem-openapi's attribute parser sees plain literals.)
macro_rules! task_operations {
    (
        $api:ident,
        paths: [$collection:tt, $item:tt, $complete:tt, $changes:tt],
        tag: $tag:tt,
        auth: $auth:ident,
        operation_ids: [
            $list:tt, $create:tt, $get:tt, $update:tt, $toggle:tt, $delete:tt, $feed:tt
        ]
        $(, path_user: $user_id:ident)? $(,)?
    ) => {
        pub struct $api;

        #[OpenApi(tag = $tag)]
        impl $api {
            /// List tasks
            ///
            /// Without parameters: every task of the caller, oldest first, as a plain array.
            /// `status` filters, `sort` and `order` reorder (ties broken by id), `limit`
            /// and `offset` page. `X-Total-Count` is the number of matching tasks
            /// before paging. A parameter that does not parse is a 400; a number out of range
            /// a 422.
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
                /// Order by `created` (`created_at`), `updated` (`updated_at`) or `title`;
                /// ties are broken by `id`, so pages never overlap.
                #[oai(default)]
                sort: Query<SortParam>,
                /// `asc` (oldest or A first) or `desc`.
                #[oai(default)]
                order: Query<OrderParam>,
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
                let query = list_query(
                    status.0,
                    sort.0,
                    order.0,
                    limit.0,
                    offset.0,
                    after.0.as_deref(),
                )?;
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
        }
    };
}

task_operations!(
    TasksApi,
    paths: ["/api/tasks", "/api/tasks/:id", "/api/tasks/:id/complete", "/api/tasks/changes"],
    tag: "ApiTags::Tasks",
    auth: BearerAuth,
    operation_ids: [
        "list_tasks",
        "create_task",
        "get_task",
        "update_task",
        "toggle_task",
        "delete_task",
        "list_changes"
    ],
);

task_operations!(
    UserTasksApi,
    paths: [
        "/api/:user_id/tasks",
        "/api/:user_id/tasks/:id",
        "/api/:user_id/tasks/:id/complete",
        "/api/:user_id/tasks/changes"
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
        "list_user_changes"
    ],
    path_user: user_id,
);

/// The error statuses each task operation can answer, by its `/api/tasks…` operationId (the
/// `/api/{user_id}/tasks…` twin adds 403). `api::spec` documents exactly these, and the test
/// harness fails any response whose status the document does not list.
pub(super) const ERROR_STATUSES: [(&str, &[u16]); 7] = [
    ("list_tasks", &[400, 401, 422, 429, 500, 503]),
    ("create_task", &[400, 401, 409, 413, 415, 422, 429, 500, 503]),
    ("get_task", &[400, 401, 404, 429, 500, 503]),
    ("update_task", &[400, 401, 404, 409, 412, 413, 415, 422, 429, 500, 503]),
    ("toggle_task", &[400, 401, 404, 409, 412, 422, 429, 500, 503]),
    ("delete_task", &[400, 401, 404, 409, 412, 422, 429, 500, 503]),
    ("list_changes", &[400, 401, 410, 422, 429, 500, 503]),
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

fn list_query(
    status: StatusParam,
    sort: SortParam,
    order: OrderParam,
    limit: Option<Limit>,
    offset: Offset,
    after: Option<&str>,
) -> Result<ListQuery, ApiError> {
    let (sort, order) = (sort.into(), order.into());
    let after = after.map(|text| cursor::decode(text, sort, order)).transpose()?;
    let mut errors = Vec::new();
    let mut check = |field: &str, value: Result<i64, String>| {
        value.map_err(|message| errors.push(FieldError::new(field, message))).ok()
    };
    let limit = limit.and_then(|limit| check("limit", limit.checked()));
    let offset = check("offset", offset.checked());
    if !errors.is_empty() {
        return Err(ApiError::Unprocessable(errors));
    }
    Ok(ListQuery { status: status.into(), sort, order, limit, offset: offset.unwrap_or(0), after })
}

async fn list(
    state: &AppState,
    caller: &Caller,
    req: &Request,
    query: ListQuery,
) -> Result<TaskListResponse, ApiError> {
    let page = state.store.list(&caller.user_id, &query).await?;
    let next = page.next.as_ref().map(|next| cursor::next_link(req.uri().path(), &query, next));
    let tasks = match page.ids {
        Some(ids) => TaskArray::Streamed {
            store: state.store.clone(),
            owner: caller.user_id.clone(),
            ids,
            status: query.status,
        },
        None => TaskArray::Whole(page.tasks.into_iter().map(Into::into).collect()),
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
    let outcome = create_task(session.writes(), req, body).await;
    session.finish(outcome).await
}

async fn create_task(
    writes: &mut dyn Writes,
    req: &Request,
    body: &Value,
) -> Result<TaskCreatedResponse, ApiError> {
    let new_task = validation::new_task(body)?;
    let task = writes.create(&new_task).await?;
    // The new task's URL in the style of the collection it was posted to.
    let location = format!("{}/{}", req.uri().path().trim_end_matches('/'), task.id);
    let etag = etag(&task);
    Ok(TaskCreatedResponse::Created(JsonBody(task.into()), location, etag))
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
    Ok(GetTaskResponse::Ok(JsonBody(task.into()), etag))
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
    let outcome = update_task(session.writes(), id, conditions.if_match, body).await;
    session.finish(outcome).await
}

async fn update_task(
    writes: &mut dyn Writes,
    id: i64,
    if_match: Option<&str>,
    body: &Value,
) -> Result<TaskResponse, ApiError> {
    let patch = validation::task_patch(body)?;
    let outcome = writes.update(id, &patch, &precondition(if_match)).await?;
    Ok(task_response(written(outcome)?))
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
    let outcome = outcome.map_err(ApiError::from).and_then(written).map(task_response);
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

fn task_response(task: Task) -> TaskResponse {
    let etag = etag(&task);
    TaskResponse::Ok(JsonBody(task.into()), etag)
}
