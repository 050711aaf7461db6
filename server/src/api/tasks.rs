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
    param::{Path, Query},
    payload::Json,
};

use super::{
    ApiTags,
    security::BearerAuth,
    types::{
        DeletedResponse, JsonObject, Limit, Offset, OrderParam, SortParam, StatusParam,
        TaskCreateSchema, TaskCreatedResponse, TaskListResponse, TaskResponse, TaskUpdateSchema,
    },
    validation,
};
use crate::{
    AppState,
    error::{ApiError, FieldError},
    store::ListQuery,
};

type CreateBody = Json<JsonObject<TaskCreateSchema>>;
type UpdateBody = Json<JsonObject<TaskUpdateSchema>>;

/// Declares the six task operations for one path style: `$api` is the type, then its three
/// paths (collection, item, completion toggle), tag and operationIds; `path_user` marks the
/// style whose paths hold `:user_id`. (Not `prefix_path`: poem-openapi would document the prefix
/// as `/api/:user_id` instead of `/api/{user_id}`.)
/// (Literals are taken as `tt` so that poem-openapi's attribute parser sees plain literals.)
macro_rules! task_operations {
    (
        $api:ident,
        paths: [$collection:tt, $item:tt, $complete:tt],
        tag: $tag:tt,
        operation_ids: [$list:tt, $create:tt, $get:tt, $update:tt, $toggle:tt, $delete:tt]
        $(, path_user: $user_id:ident)? $(,)?
    ) => {
        pub struct $api;

        #[OpenApi(tag = $tag)]
        impl $api {
            /// List tasks
            ///
            /// Without parameters: every task of the caller, oldest first, as a plain array.
            /// `status` filters, `sort` and `order` reorder (ties broken by id), `limit`
            /// (1–1000) and `offset` page. `X-Total-Count` is the number of matching tasks
            /// before paging. A parameter that does not parse is a 400; a number out of range
            /// a 422.
            #[oai(path = $collection, method = "get", operation_id = $list)]
            #[allow(clippy::too_many_arguments)]
            async fn list(
                &self,
                auth: BearerAuth,
                $(
                    /// The caller's own user id (the token's subject); any other is a 403.
                    $user_id: Path<String>,
                )?
                state: Data<&AppState>,
                status: Query<Option<StatusParam>>,
                sort: Query<Option<SortParam>>,
                order: Query<Option<OrderParam>>,
                limit: Query<Option<Limit>>,
                offset: Query<Option<Offset>>,
            ) -> Result<TaskListResponse, ApiError> {
                $( let _ = $user_id; )?
                list(&state, &auth, list_query(status.0, sort.0, order.0, limit.0, offset.0)?).await
            }

            /// Create a task
            ///
            /// The owner is the token's subject; `id`, `user_id` and timestamps in the body are
            /// ignored, as are unknown fields. `Location` is the new task's URL.
            #[oai(path = $collection, method = "post", operation_id = $create)]
            async fn create(
                &self,
                auth: BearerAuth,
                $(
                    /// The caller's own user id (the token's subject); any other is a 403.
                    $user_id: Path<String>,
                )?
                state: Data<&AppState>,
                req: &Request,
                body: CreateBody,
            ) -> Result<TaskCreatedResponse, ApiError> {
                $( let _ = $user_id; )?
                create(&state, &auth, req, &body).await
            }

            /// Get a task
            ///
            /// 404 when it does not exist or belongs to someone else (the two look the same).
            #[oai(path = $item, method = "get", operation_id = $get)]
            async fn get(
                &self,
                auth: BearerAuth,
                $(
                    /// The caller's own user id (the token's subject); any other is a 403.
                    $user_id: Path<String>,
                )?
                id: Path<i64>,
                state: Data<&AppState>,
            ) -> Result<TaskResponse, ApiError> {
                $( let _ = $user_id; )?
                get(&state, &auth, id.0).await
            }

            /// Update a task
            ///
            /// Partial: only the fields present change (at least one of `title`,
            /// `description`, `completed`); `description: null` or `""` clears it;
            /// `updated_at` moves forward.
            #[oai(path = $item, method = "put", operation_id = $update)]
            async fn update(
                &self,
                auth: BearerAuth,
                $(
                    /// The caller's own user id (the token's subject); any other is a 403.
                    $user_id: Path<String>,
                )?
                id: Path<i64>,
                state: Data<&AppState>,
                body: UpdateBody,
            ) -> Result<TaskResponse, ApiError> {
                $( let _ = $user_id; )?
                update(&state, &auth, id.0, &body).await
            }

            /// Toggle a task's completion
            ///
            /// Flips `completed` atomically in the database, so N concurrent toggles give N
            /// distinct consecutive states. Takes no body (one sent is ignored).
            #[oai(path = $complete, method = "patch", operation_id = $toggle)]
            async fn toggle(
                &self,
                auth: BearerAuth,
                $(
                    /// The caller's own user id (the token's subject); any other is a 403.
                    $user_id: Path<String>,
                )?
                id: Path<i64>,
                state: Data<&AppState>,
            ) -> Result<TaskResponse, ApiError> {
                $( let _ = $user_id; )?
                toggle(&state, &auth, id.0).await
            }

            /// Delete a task
            ///
            /// 204 with an empty body; 404 when it does not exist or belongs to someone else.
            #[oai(path = $item, method = "delete", operation_id = $delete)]
            async fn delete(
                &self,
                auth: BearerAuth,
                $(
                    /// The caller's own user id (the token's subject); any other is a 403.
                    $user_id: Path<String>,
                )?
                id: Path<i64>,
                state: Data<&AppState>,
            ) -> Result<DeletedResponse, ApiError> {
                $( let _ = $user_id; )?
                delete(&state, &auth, id.0).await
            }
        }
    };
}

task_operations!(
    TasksApi,
    paths: ["/api/tasks", "/api/tasks/:id", "/api/tasks/:id/complete"],
    tag: "ApiTags::Tasks",
    operation_ids: ["list_tasks", "create_task", "get_task", "update_task", "toggle_task", "delete_task"],
);

task_operations!(
    UserTasksApi,
    paths: [
        "/api/:user_id/tasks",
        "/api/:user_id/tasks/:id",
        "/api/:user_id/tasks/:id/complete"
    ],
    tag: "ApiTags::UserTasks",
    operation_ids: [
        "list_user_tasks",
        "create_user_task",
        "get_user_task",
        "update_user_task",
        "toggle_user_task",
        "delete_user_task"
    ],
    path_user: user_id,
);

fn list_query(
    status: Option<StatusParam>,
    sort: Option<SortParam>,
    order: Option<OrderParam>,
    limit: Option<Limit>,
    offset: Option<Offset>,
) -> Result<ListQuery, ApiError> {
    let mut errors = Vec::new();
    let mut check = |field: &str, value: Result<i64, String>| {
        value.map_err(|message| errors.push(FieldError::new(field, message))).ok()
    };
    let limit = limit.and_then(|limit| check("limit", limit.checked()));
    let offset = offset.and_then(|offset| check("offset", offset.checked()));
    if !errors.is_empty() {
        return Err(ApiError::Unprocessable(errors));
    }
    Ok(ListQuery {
        status: status.map(Into::into).unwrap_or_default(),
        sort: sort.map(Into::into).unwrap_or_default(),
        order: order.map(Into::into).unwrap_or_default(),
        limit,
        offset: offset.unwrap_or(0),
    })
}

async fn list(
    state: &AppState,
    auth: &BearerAuth,
    query: ListQuery,
) -> Result<TaskListResponse, ApiError> {
    let page = state.store.list(&auth.0.user_id, &query).await?;
    let tasks = page.tasks.into_iter().map(Into::into).collect();
    Ok(TaskListResponse::Ok(Json(tasks), page.total))
}

async fn create(
    state: &AppState,
    auth: &BearerAuth,
    req: &Request,
    body: &CreateBody,
) -> Result<TaskCreatedResponse, ApiError> {
    let new_task = validation::new_task(&body.0.value)?;
    let task = state.store.create(&auth.0.user_id, &new_task).await?;
    // The new task's URL in the style of the collection it was posted to.
    let location = format!("{}/{}", req.uri().path().trim_end_matches('/'), task.id);
    Ok(TaskCreatedResponse::Created(Json(task.into()), location))
}

async fn get(state: &AppState, auth: &BearerAuth, id: i64) -> Result<TaskResponse, ApiError> {
    let task = state.store.get(&auth.0.user_id, id).await?;
    let task = task.ok_or(ApiError::TASK_NOT_FOUND)?;
    Ok(TaskResponse::Ok(Json(task.into())))
}

async fn update(
    state: &AppState,
    auth: &BearerAuth,
    id: i64,
    body: &UpdateBody,
) -> Result<TaskResponse, ApiError> {
    let patch = validation::task_patch(&body.0.value)?;
    let task = state.store.update(&auth.0.user_id, id, &patch).await?;
    let task = task.ok_or(ApiError::TASK_NOT_FOUND)?;
    Ok(TaskResponse::Ok(Json(task.into())))
}

async fn toggle(state: &AppState, auth: &BearerAuth, id: i64) -> Result<TaskResponse, ApiError> {
    let task = state.store.toggle_completed(&auth.0.user_id, id).await?;
    let task = task.ok_or(ApiError::TASK_NOT_FOUND)?;
    Ok(TaskResponse::Ok(Json(task.into())))
}

async fn delete(state: &AppState, auth: &BearerAuth, id: i64) -> Result<DeletedResponse, ApiError> {
    if state.store.delete(&auth.0.user_id, id).await? {
        Ok(DeletedResponse::NoContent)
    } else {
        Err(ApiError::TASK_NOT_FOUND)
    }
}
