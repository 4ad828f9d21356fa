//! The storage seam: where the rate limiter, the CAPTCHA service and the token service keep
//! their state. [`Store::Files`] is the default, one host's state files under `var/`
//! changed under `flock`; [`Store::Redis`] is a shared Redis (or Valkey) for several web
//! nodes behind one load balancer (the `redis` cargo feature, [`redis`]).
//! Both give the services the same operations with the same guarantees: read the current
//! value, let the service's pure decision function say what to do, and apply that
//! atomically against every other process on every node. The names of what is serialized
//! stay the seed's lock keys (`ratelimit_{key}`, `captcha_{id}`, `token_{profile}`), as
//! file names under `var/lock/` or as Redis keys behind a prefix.
//!
//! This module never decides anything about a value, and touches files only through
//! `state`, `atomic` and the lock runner; the spool, the mail quota and the sweep marker stay on each node's own disk
//! whatever the store (an accepted message must never depend on a shared store).

// The Redis implementation of the seam is a child of it: it speaks the seam's `Change` and
// `Expiry`. Without the feature, `redis_absent.rs` stands in (a type with no values).
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(not(feature = "redis"))]
#[path = "store/redis_absent.rs"]
pub mod redis;

use crate::error::{Error, Result};
use crate::lock::{LockKey, LockRunner};
use crate::state::{self, Durability, Loaded, TriggerReason, Validate};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Which store the config chose (`[store] backend`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Backend {
    /// State files under `var/`, one host.
    #[default]
    Files,
    /// A shared Redis.
    Redis(RedisConfig),
}

/// `[store]` with `backend = "redis"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://host:port/db`, `rediss://…` (TLS) or `unix:///path/to/socket`.
    pub url: String,
    /// Put in front of every key, so that several sites can share one Redis.
    pub prefix: String,
    /// Bound on establishing the connection.
    pub connect_timeout: Duration,
    /// Bound on waiting for one answer.
    pub command_timeout: Duration,
    /// For `rediss://`: the CA certificate (PEM) the server's certificate must chain to,
    /// instead of the system's CA store (for a Redis with a private CA).
    pub ca_file: Option<std::path::PathBuf>,
}

impl RedisConfig {
    /// The URL as it may appear in a log line: without a password or user name, and
    /// without query parameters (where `unix:` URLs carry them).
    pub fn shown_url(&self) -> String {
        let mut shown = self.url.split('?').next().unwrap_or("").to_string();
        if let Some(scheme_end) = shown.find("://") {
            let rest = &shown[scheme_end + 3..];
            let host_start = rest.find('/').unwrap_or(rest.len());
            if let Some(at) = rest[..host_start].rfind('@') {
                shown = format!("{}://***@{}", &shown[..scheme_end], &rest[at + 1..]);
            }
        }
        shown
    }
}

/// What a service's decision wants done with the stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<T> {
    /// Leave it as it is.
    Keep,
    /// Store this value.
    Put(T, Expiry),
    /// Remove it.
    Delete,
}

/// How long a value stored in Redis lives. The file store ignores it: its sweeps and
/// ceilings remove finished state instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// This many seconds from now (counted by Redis's clock, so the nodes' clocks need
    /// not agree on it).
    After(u64),
    /// Whatever the stored value had.
    Unchanged,
    /// Never: it is removed only by the service (token lists).
    Never,
}

/// The store the services of one runtime tree use.
#[derive(Debug, Clone, Default)]
pub enum Store {
    /// Files under `var/`, each change under its `flock` lock.
    #[default]
    Files,
    /// A shared Redis.
    Redis(Arc<redis::RedisStore>),
}

impl Store {
    /// The store `backend` names. Opening a Redis store does not connect yet: the first
    /// operation does, so that a request that needs no shared state never waits for it.
    /// `lock_wait` bounds each operation the way it bounds a lock wait.
    pub fn open(backend: &Backend, lock_wait: Duration, config: &Path) -> Result<Store> {
        match backend {
            Backend::Files => Ok(Store::Files),
            Backend::Redis(r) => Ok(Store::Redis(Arc::new(redis::RedisStore::open(
                r, lock_wait, config,
            )?))),
        }
    }

    /// The shared store, if this tree uses one.
    pub fn redis(&self) -> Option<&redis::RedisStore> {
        match self {
            Store::Files => None,
            Store::Redis(r) => Some(r),
        }
    }

    /// Asks the store whether it answers (for `--check`): `Ok(None)` for files (their
    /// folders are checked elsewhere), else a line saying what answered.
    pub fn ping(&self) -> Result<Option<String>> {
        match self {
            Store::Files => Ok(None),
            Store::Redis(r) => r.ping().map(Some),
        }
    }
}

/// Where one value lives in the file store: its state file, the lock runner that guards
/// it and how its writes must reach the disk. The Redis store needs only the lock key.
#[derive(Debug, Clone, Copy)]
pub struct FileSlot<'a> {
    /// The state file.
    pub path: &'a Path,
    /// The runner whose lock `key` guards it.
    pub locks: &'a LockRunner,
    /// Whether a write is fsynced (token lists) or not (challenges).
    pub durability: Durability,
}

impl Store {
    /// The atomic read-decide-write of one value, named by its lock key: `decide` gets
    /// the current value (`None` when there is none or when it failed validation, which
    /// is reset with a logged reason) and says what to change and what to answer. With
    /// files this runs once under the `flock` lock; with Redis it may run again on a newer
    /// value (see [`redis::RedisStore::update`]), so it must not have side
    /// effects of its own.
    pub fn update<T, R>(
        &self,
        slot: FileSlot<'_>,
        key: &LockKey,
        now: u64,
        trigger: TriggerReason,
        mut decide: impl FnMut(Option<&T>) -> (Change<T>, R),
    ) -> Result<R>
    where
        T: DeserializeOwned + Validate + Serialize,
    {
        if let Some(r) = self.redis() {
            return r.update(key, now, trigger, decide);
        }
        slot.locks.run(key, || {
            let current = state::read_or_reset::<T>(slot.path, now, trigger)?;
            let (change, answer) = decide(current.as_ref());
            match change {
                Change::Keep => {}
                Change::Put(value, _) => state::write_with(slot.path, &value, slot.durability)?,
                Change::Delete => crate::atomic::remove(slot.path)?,
            }
            Ok(answer)
        })
    }

    /// Reads one value without a lock: a file is always a whole version (every write is
    /// a rename), and so is a Redis value (every `SET` applies at once).
    pub fn read<T: DeserializeOwned + Validate>(
        &self,
        path: &Path,
        key: &LockKey,
        now: u64,
    ) -> Result<Loaded<T>> {
        match self.redis() {
            Some(r) => r.read(key, now),
            None => state::read(path, now),
        }
    }

    /// True when the value exists.
    pub fn exists(&self, path: &Path, key: &LockKey) -> Result<bool> {
        match self.redis() {
            Some(r) => r.exists(key),
            None => state::exists(path),
        }
    }
}

/// The error a config naming the Redis store gets from a build without it.
pub fn not_built(config: &Path) -> Error {
    Error::config(
        config,
        "store.backend",
        "this build has no Redis support: use the executables built with the `redis` \
         feature (the release archive whose name ends in -redis, or `cargo build --release \
         --features redis`), or set backend = \"files\"",
    )
}
