//! A sink that passes every call to another, but those a test hooks: a fault injected
//! at one call (a put that lands and is then refused, a listing that lets someone
//! write first) without writing every other call out again, and without quietly
//! dropping what the inner sink does (its lock, and extending it).

use std::sync::Arc;

use async_trait::async_trait;
use pgproof_core::sink::{ByteStream, ObjectMeta, RetentionLock};
use pgproof_core::{Result, Sink};

/// What a test changes of a sink's calls; each hook MUST behave as `inner` does
/// unless the test means otherwise (the defaults pass the call on).
#[async_trait]
pub trait Hooks: Send + Sync + std::fmt::Debug {
    /// `inner.put`, by default.
    async fn put(&self, inner: &dyn Sink, key: &str, body: ByteStream) -> Result<u64> {
        inner.put(key, body).await
    }

    /// `inner.get`, by default.
    async fn get(&self, inner: &dyn Sink, key: &str) -> Result<ByteStream> {
        inner.get(key).await
    }

    /// `inner.list`, by default.
    async fn list(&self, inner: &dyn Sink, prefix: &str) -> Result<Vec<ObjectMeta>> {
        inner.list(prefix).await
    }
}

/// `inner` with `hooks` on its calls.
#[derive(Debug)]
pub struct Hooked<H> {
    /// The sink every call ends at.
    pub inner: Arc<dyn Sink>,
    /// What the test changes.
    pub hooks: H,
}

#[async_trait]
impl<H: Hooks> Sink for Hooked<H> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn put(&self, key: &str, body: ByteStream) -> Result<u64> {
        self.hooks.put(&*self.inner, key, body).await
    }
    async fn get(&self, key: &str) -> Result<ByteStream> {
        self.hooks.get(&*self.inner, key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.hooks.list(&*self.inner, prefix).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
    fn retention(&self) -> Option<RetentionLock> {
        self.inner.retention()
    }
    async fn extend_retention(&self, key: &str, lock: &RetentionLock) -> Result<()> {
        self.inner.extend_retention(key, lock).await
    }
}
