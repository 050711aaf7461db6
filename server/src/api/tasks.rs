//! The task operations. Each is served under two paths — `/api/tasks…` (the owner is the
//! token's subject) and `/api/{user_id}/tasks…` (the same, after the path user has been checked
//! against the subject by the security scheme) — by two thin operations that share one body.

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

pub struct TasksApi;

#[OpenApi]
impl TasksApi {
    /// List your tasks
    ///
    /// Without parameters: every task of the caller, oldest first, as a plain array. `status`
    /// filters, `sort` and `order` reorder (ties broken by id), `limit` (1–1000) and `offset`
    /// page. `X-Total-Count` is the number of matching tasks before paging. A parameter that
    /// does not parse is a 400; a number out of range a 422.
    #[oai(
        path = "/api/tasks",
        method = "get",
        operation_id = "list_tasks",
        tag = "ApiTags::Tasks"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn list_tasks(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        status: Query<Option<StatusParam>>,
        sort: Query<Option<SortParam>>,
        order: Query<Option<OrderParam>>,
        limit: Query<Option<Limit>>,
        offset: Query<Option<Offset>>,
    ) -> Result<TaskListResponse, ApiError> {
        let query = list_query(status.0, sort.0, order.0, limit.0, offset.0)?;
        list(&state, &auth, &query).await
    }

    /// List a user's tasks
    ///
    /// `list_tasks` under the user path: `{user_id}` must be the token's subject (else 403).
    #[oai(
        path = "/api/:user_id/tasks",
        method = "get",
        operation_id = "list_user_tasks",
        tag = "ApiTags::UserTasks"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn list_user_tasks(
        &self,
        auth: BearerAuth,
        #[oai(name = "user_id")] _user_id: Path<String>,
        state: Data<&AppState>,
        status: Query<Option<StatusParam>>,
        sort: Query<Option<SortParam>>,
        order: Query<Option<OrderParam>>,
        limit: Query<Option<Limit>>,
        offset: Query<Option<Offset>>,
    ) -> Result<TaskListResponse, ApiError> {
        let query = list_query(status.0, sort.0, order.0, limit.0, offset.0)?;
        list(&state, &auth, &query).await
    }

    /// Create a task
    ///
    /// The owner is the token's subject; `id`, `user_id` and timestamps in the body are
    /// ignored, as are unknown fields. `Location` is the new task's URL.
    #[oai(
        path = "/api/tasks",
        method = "post",
        operation_id = "create_task",
        tag = "ApiTags::Tasks"
    )]
    async fn create_task(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
        req: &Request,
        body: CreateBody,
    ) -> Result<TaskCreatedResponse, ApiError> {
        create(&state, &auth, req, &body).await
    }

    /// Create a task for a user
    ///
    /// `create_task` under the user path: `{user_id}` must be the token's subject (else 403).
    #[oai(
        path = "/api/:user_id/tasks",
        method = "post",
        operation_id = "create_user_task",
        tag = "ApiTags::UserTasks"
    )]
    async fn create_user_task(
        &self,
        auth: BearerAuth,
        #[oai(name = "user_id")] _user_id: Path<String>,
        state: Data<&AppState>,
        req: &Request,
        body: CreateBody,
    ) -> Result<TaskCreatedResponse, ApiError> {
        create(&state, &auth, req, &body).await
    }

    /// Get a task
    ///
    /// 404 when it does not exist or belongs to someone else (the two look the same).
    #[oai(
        path = "/api/tasks/:id",
        method = "get",
        operation_id = "get_task",
        tag = "ApiTags::Tasks"
    )]
    async fn get_task(
        &self,
        auth: BearerAuth,
        id: Path<i64>,
        state: Data<&AppState>,
    ) -> Result<TaskResponse, ApiError> {
        get(&state, &auth, id.0).await
    }

    /// Get a user's task
    ///
    /// `get_task` under the user path: `{user_id}` must be the token's subject (else 403).
    #[oai(
        path = "/api/:user_id/tasks/:id",
        method = "get",
        operation_id = "get_user_task",
        tag = "ApiTags::UserTasks"
    )]
    async fn get_user_task(
        &self,
        auth: BearerAuth,
        #[oai(name = "user_id")] _user_id: Path<String>,
        id: Path<i64>,
        state: Data<&AppState>,
    ) -> Result<TaskResponse, ApiError> {
        get(&state, &auth, id.0).await
    }

    /// Update a task
    ///
    /// Partial: only the fields present change (at least one of `title`, `description`,
    /// `completed`); `description: null` or `""` clears it; `updated_at` moves forward.
    #[oai(
        path = "/api/tasks/:id",
        method = "put",
        operation_id = "update_task",
        tag = "ApiTags::Tasks"
    )]
    async fn update_task(
        &self,
        auth: BearerAuth,
        id: Path<i64>,
        state: Data<&AppState>,
        body: UpdateBody,
    ) -> Result<TaskResponse, ApiError> {
        update(&state, &auth, id.0, &body).await
    }

    /// Update a user's task
    ///
    /// `update_task` under the user path: `{user_id}` must be the token's subject (else 403).
    #[oai(
        path = "/api/:user_id/tasks/:id",
        method = "put",
        operation_id = "update_user_task",
        tag = "ApiTags::UserTasks"
    )]
    async fn update_user_task(
        &self,
        auth: BearerAuth,
        #[oai(name = "user_id")] _user_id: Path<String>,
        id: Path<i64>,
        state: Data<&AppState>,
        body: UpdateBody,
    ) -> Result<TaskResponse, ApiError> {
        update(&state, &auth, id.0, &body).await
    }

    /// Toggle a task's completion
    ///
    /// Flips `completed` atomically in the database, so N concurrent toggles give N distinct
    /// consecutive states. Takes no body (one sent is ignored).
    #[oai(
        path = "/api/tasks/:id/complete",
        method = "patch",
        operation_id = "toggle_task",
        tag = "ApiTags::Tasks"
    )]
    async fn toggle_task(
        &self,
        auth: BearerAuth,
        id: Path<i64>,
        state: Data<&AppState>,
    ) -> Result<TaskResponse, ApiError> {
        toggle(&state, &auth, id.0).await
    }

    /// Toggle a user's task's completion
    ///
    /// `toggle_task` under the user path: `{user_id}` must be the token's subject (else 403).
    #[oai(
        path = "/api/:user_id/tasks/:id/complete",
        method = "patch",
        operation_id = "toggle_user_task",
        tag = "ApiTags::UserTasks"
    )]
    async fn toggle_user_task(
        &self,
        auth: BearerAuth,
        #[oai(name = "user_id")] _user_id: Path<String>,
        id: Path<i64>,
        state: Data<&AppState>,
    ) -> Result<TaskResponse, ApiError> {
        toggle(&state, &auth, id.0).await
    }

    /// Delete a task
    ///
    /// 204 with an empty body; 404 when it does not exist or belongs to someone else.
    #[oai(
        path = "/api/tasks/:id",
        method = "delete",
        operation_id = "delete_task",
        tag = "ApiTags::Tasks"
    )]
    async fn delete_task(
        &self,
        auth: BearerAuth,
        id: Path<i64>,
        state: Data<&AppState>,
    ) -> Result<DeletedResponse, ApiError> {
        delete(&state, &auth, id.0).await
    }

    /// Delete a user's task
    ///
    /// `delete_task` under the user path: `{user_id}` must be the token's subject (else 403).
    #[oai(
        path = "/api/:user_id/tasks/:id",
        method = "delete",
        operation_id = "delete_user_task",
        tag = "ApiTags::UserTasks"
    )]
    async fn delete_user_task(
        &self,
        auth: BearerAuth,
        #[oai(name = "user_id")] _user_id: Path<String>,
        id: Path<i64>,
        state: Data<&AppState>,
    ) -> Result<DeletedResponse, ApiError> {
        delete(&state, &auth, id.0).await
    }
}

fn list_query(
    status: Option<StatusParam>,
    sort: Option<SortParam>,
    order: Option<OrderParam>,
    limit: Option<Limit>,
    offset: Option<Offset>,
) -> Result<ListQuery, ApiError> {
    let mut errors = Vec::new();
    let mut check = |field: &str, value: Result<i64, String>| {
        value
            .map_err(|message| errors.push(FieldError::new(field, message)))
            .ok()
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
    query: &ListQuery,
) -> Result<TaskListResponse, ApiError> {
    let page = state.store.list(&auth.0.user_id, query).await?;
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
