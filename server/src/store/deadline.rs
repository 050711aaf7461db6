//! A store decorator that bounds every call, so a database that stops answering turns into a
//! prompt `Unavailable` (a 503) instead of a request that hangs. The writes it hands out are
//! bounded call by call too.

use std::{future::Future, sync::Arc, time::Duration};

use async_trait::async_trait;

use super::{
    Claim, Feed, Filter, IdempotencyKey, ListQuery, NewTask, Page, PoolStatus, Precondition,
    Purged, StoreError, StoreResult, Task, TaskPatch, TaskStore, Writes, Written,
};

pub struct Deadline {
    inner: Arc<dyn TaskStore>,
    limit: Duration,
}

impl Deadline {
    pub fn new(inner: Arc<dyn TaskStore>, limit: Duration) -> Self {
        Self { inner, limit }
    }
}

async fn bounded<T>(limit: Duration, call: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or_else(|_| Err(StoreError::Unavailable("database call timed out".into())))
}

#[async_trait]
impl TaskStore for Deadline {
    async fn list(&self, owner: &str, query: &ListQuery) -> StoreResult<Page> {
        bounded(self.limit, self.inner.list(owner, query)).await
    }

    async fn get(&self, owner: &str, id: i64) -> StoreResult<Option<Task>> {
        bounded(self.limit, self.inner.get(owner, id)).await
    }

    async fn tasks_by_id(
        &self,
        owner: &str,
        ids: &[i64],
        filter: &Filter,
    ) -> StoreResult<Vec<Task>> {
        bounded(self.limit, self.inner.tasks_by_id(owner, ids, filter)).await
    }

    async fn changes(&self, owner: &str, since: Option<i64>, limit: i64) -> StoreResult<Feed> {
        bounded(self.limit, self.inner.changes(owner, since, limit)).await
    }

    async fn versions(&self, owners: &[String]) -> StoreResult<Vec<(String, i64)>> {
        bounded(self.limit, self.inner.versions(owners)).await
    }

    async fn announce(&self, owners: &[String]) -> StoreResult<()> {
        bounded(self.limit, self.inner.announce(owners)).await
    }

    async fn writes(&self, owner: &str) -> StoreResult<Box<dyn Writes>> {
        let inner = bounded(self.limit, self.inner.writes(owner)).await?;
        Ok(Box::new(BoundedWrites { inner, limit: self.limit }))
    }

    async fn claim(&self, owner: &str, key: &IdempotencyKey) -> StoreResult<Claim> {
        Ok(match bounded(self.limit, self.inner.claim(owner, key)).await? {
            Claim::First(inner) => {
                Claim::First(Box::new(BoundedWrites { inner, limit: self.limit }))
            }
            other => other,
        })
    }

    async fn purge(&self) -> StoreResult<Purged> {
        bounded(self.limit, self.inner.purge()).await
    }

    async fn ping(&self) -> StoreResult<()> {
        bounded(self.limit, self.inner.ping()).await
    }

    fn pool_status(&self) -> PoolStatus {
        self.inner.pool_status()
    }
}

struct BoundedWrites {
    inner: Box<dyn Writes>,
    limit: Duration,
}

#[async_trait]
impl Writes for BoundedWrites {
    async fn create(&mut self, task: &NewTask) -> StoreResult<Task> {
        bounded(self.limit, self.inner.create(task)).await
    }

    async fn update(
        &mut self,
        id: i64,
        patch: &TaskPatch,
        precondition: &Precondition,
    ) -> StoreResult<Written<Task>> {
        bounded(self.limit, self.inner.update(id, patch, precondition)).await
    }

    async fn toggle_completed(
        &mut self,
        id: i64,
        precondition: &Precondition,
    ) -> StoreResult<Written<Task>> {
        bounded(self.limit, self.inner.toggle_completed(id, precondition)).await
    }

    async fn delete(&mut self, id: i64, precondition: &Precondition) -> StoreResult<Written<()>> {
        bounded(self.limit, self.inner.delete(id, precondition)).await
    }

    async fn commit(self: Box<Self>, kept: Option<&[u8]>) -> StoreResult<()> {
        bounded(self.limit, self.inner.commit(kept)).await
    }
}
