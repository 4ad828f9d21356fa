//! The Redis store in a build without the `redis` feature: a type with no values, so the
//! services' Redis branches compile to nothing and the default executables do not link a
//! Redis client. A config that asks for Redis is refused when it is read (see
//! [`crate::store::not_built`]), so nothing here can ever run; it must never grow logic.

use crate::error::Result;
use crate::lock::LockKey;
use crate::state::{Loaded, TriggerReason, Validate};
use crate::store::{Change, Expiry, RedisConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;
use std::time::Duration;

/// No Redis store can exist in this build.
#[derive(Debug)]
pub enum RedisStore {}

impl RedisStore {
    /// Always the "not built with Redis" config error.
    pub fn open(_: &RedisConfig, _: Duration, config: &Path) -> Result<RedisStore> {
        Err(crate::store::not_built(config))
    }

    /// Unreachable: there is no value to call it on.
    pub fn ping(&self) -> Result<String> {
        match *self {}
    }

    /// Unreachable: there is no value to call it on.
    pub fn read<T: DeserializeOwned + Validate>(&self, _: &LockKey, _: u64) -> Result<Loaded<T>> {
        match *self {}
    }

    /// Unreachable: there is no value to call it on.
    pub fn exists(&self, _: &LockKey) -> Result<bool> {
        match *self {}
    }

    /// Unreachable: there is no value to call it on.
    pub fn put<T: Serialize>(&self, _: &LockKey, _: &T, _: Expiry) -> Result<()> {
        match *self {}
    }

    /// Unreachable: there is no value to call it on.
    pub fn update<T, R>(
        &self,
        _: &LockKey,
        _: u64,
        _: TriggerReason,
        _: impl FnMut(Option<&T>) -> (Change<T>, R),
    ) -> Result<R>
    where
        T: DeserializeOwned + Validate + Serialize,
    {
        match *self {}
    }
}
