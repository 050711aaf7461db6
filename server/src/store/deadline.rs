//! A store decorator that bounds every call, so a database that stops answering turns into a
//! prompt `Unavailable` (a 503) instead of a request that hangs.

use std::{future::Future, sync::Arc, time::Duration};

use async_trait::async_trait;

use super::{
    ListQuery, NewTask, Page, PoolStatus, Precondition, StoreError, StoreResult, Task, TaskPatch,
    TaskStore, Written,
};

pub struct Deadline {
    inner: Arc<dyn TaskStore>,
    limit: Duration,
}

impl Deadline {
    pub fn new(inner: Arc<dyn TaskStore>, limit: Duration) -> Self {
        Self { inner, limit }
    }

    async fn run<T>(&self, call: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
        tokio::time::timeout(self.limit, call)
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("database call timed out".into())))
    }
}

#[async_trait]
impl TaskStore for Deadline {
    async fn list(&self, owner: &str, query: &ListQuery) -> StoreResult<Page> {
        self.run(self.inner.list(owner, query)).await
    }

    async fn create(&self, owner: &str, task: &NewTask) -> StoreResult<Task> {
        self.run(self.inner.create(owner, task)).await
    }

    async fn get(&self, owner: &str, id: i64) -> StoreResult<Option<Task>> {
        self.run(self.inner.get(owner, id)).await
    }

    async fn update(
        &self,
        owner: &str,
        id: i64,
        patch: &TaskPatch,
        precondition: &Precondition,
    ) -> StoreResult<Written<Task>> {
        self.run(self.inner.update(owner, id, patch, precondition)).await
    }

    async fn toggle_completed(
        &self,
        owner: &str,
        id: i64,
        precondition: &Precondition,
    ) -> StoreResult<Written<Task>> {
        self.run(self.inner.toggle_completed(owner, id, precondition)).await
    }

    async fn delete(
        &self,
        owner: &str,
        id: i64,
        precondition: &Precondition,
    ) -> StoreResult<Written<()>> {
        self.run(self.inner.delete(owner, id, precondition)).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.run(self.inner.ping()).await
    }

    fn pool_status(&self) -> PoolStatus {
        self.inner.pool_status()
    }
}
