//! The Redis store (cargo feature `redis`): the services' state in a Redis or Valkey shared
//! by several web nodes. A value is stored under `{prefix}{lock key}` in the same TOML as
//! its state file and validated the same way when read, so the seed's lock keys stay the
//! names of what is serialized and no raw client address reaches Redis (the rate-limit key
//! is already the salted hash).
//!
//! A change is optimistic and made atomic by the server: `WATCH` the key, `GET` it, let the
//! service's pure decision function say what to do, then `MULTI` / `SET` or `DEL` /
//! `EXEC`. Redis runs the `EXEC` only if nobody wrote the key since the `WATCH`; otherwise
//! the round starts over from the newer value. We chose this over Lua scripts so that the
//! decisions stay the one Rust implementation both stores share, rather than a second copy
//! in Lua that could drift from it. Every round is bounded like a lock wait: when
//! `lock_wait` runs out before a round commits, the answer is the same lock timeout, and a
//! Redis that does not answer within `command_timeout` is a [`Error::Store`] (both a 503
//! with `Retry-After`).
//!
//! This module never decides about a value, never blocks longer than its bounds, and
//! never puts a password in an error or a log line.

use crate::error::{Error, Result};
use crate::lock::LockKey;
use crate::state::{self, Loaded, TriggerReason, Validate};
use crate::store::{Change, Expiry, RedisConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most this many idle connections are kept; more threads than this at once connect
/// afresh and close again.
const MAX_IDLE: usize = 16;

/// One Redis server (and key prefix) as the store of one runtime tree; connections are
/// made on first use and kept for the life of the process.
pub struct RedisStore {
    client: redis::Client,
    prefix: String,
    shown_url: String,
    connect_timeout: Duration,
    command_timeout: Duration,
    wait: Duration,
    /// Connections not in use. A FastCGI responder keeps one store for all its worker
    /// threads (see `App::discover`), so each operation takes a connection of its own
    /// rather than queueing behind another thread's lock wait on a shared one.
    idle: Mutex<Vec<redis::Connection>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.shown_url)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Parses the URL; connects on first use. `config` names the config file in errors.
    pub fn open(cfg: &RedisConfig, lock_wait: Duration, config: &Path) -> Result<RedisStore> {
        let bad_url = |e: redis::RedisError| {
            let detail = e.detail().unwrap_or("unparsable").to_string();
            Error::config(config, "store.url", format!("not a Redis URL: {detail}"))
        };
        let client = match &cfg.ca_file {
            None => redis::Client::open(cfg.url.as_str()).map_err(bad_url)?,
            Some(ca) => {
                let pem =
                    crate::fsio::read(ca).map_err(|e| Error::io("read store.ca_file", ca, e))?;
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                redis::Client::build_with_tls(cfg.url.as_str(), certs).map_err(bad_url)?
            }
        };
        Ok(RedisStore {
            client,
            prefix: cfg.prefix.clone(),
            shown_url: cfg.shown_url(),
            connect_timeout: cfg.connect_timeout,
            command_timeout: cfg.command_timeout,
            wait: lock_wait,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// The Redis key of `key`.
    pub fn key_of(&self, key: &LockKey) -> String {
        format!("{}{}", self.prefix, key.as_str())
    }

    /// Runs `f` on an idle connection, or on a new one when none is idle, and gives it
    /// back afterwards. A connection that failed is dropped instead: a timed-out or broken
    /// one may still have an answer in flight, which must not be read as the answer to the
    /// next command.
    fn with_conn<R>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> Result<R, Failure>,
    ) -> Result<R> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut conn = match idle {
            Some(conn) => conn,
            None => {
                let conn = self
                    .client
                    .get_connection_with_timeout(self.connect_timeout)
                    .map_err(|e| self.error(&e, "cannot connect"))?;
                let timeout = Some(self.command_timeout);
                conn.set_read_timeout(timeout)
                    .and_then(|()| conn.set_write_timeout(timeout))
                    .map_err(|e| self.error(&e, "cannot set timeouts"))?;
                conn
            }
        };
        match f(&mut conn) {
            Ok(r) => {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < MAX_IDLE {
                    idle.push(conn);
                }
                Ok(r)
            }
            Err(Failure::Redis(e)) => Err(self.error(&e, "failed")),
            Err(Failure::Ours(e)) => Err(e),
        }
    }

    fn error(&self, e: &redis::RedisError, doing: &str) -> Error {
        let detail = if e.is_timeout() {
            format!(
                "{doing}: no answer within {} ms",
                self.command_timeout.max(self.connect_timeout).as_millis()
            )
        } else {
            format!("{doing}: {e}")
        };
        self.store_error(&detail)
    }

    fn store_error(&self, detail: &str) -> Error {
        Error::Store {
            url: self.shown_url.clone(),
            detail: detail.to_string(),
        }
    }

    /// `PING`: a line for the self-check.
    pub fn ping(&self) -> Result<String> {
        let start = Instant::now();
        let answer: String = self.with_conn(|c| Ok(redis::cmd("PING").query(c)?))?;
        Ok(format!(
            "Redis {} answered {answer} in {:.1} ms (keys under {:?})",
            self.shown_url,
            start.elapsed().as_secs_f64() * 1000.0,
            self.prefix
        ))
    }

    /// Reads the value of `key` without any lock (a single `GET`): it is always a whole
    /// value, since Redis applies each `SET` at once.
    pub fn read<T: DeserializeOwned + Validate>(
        &self,
        key: &LockKey,
        now: u64,
    ) -> Result<Loaded<T>> {
        let k = self.key_of(key);
        let raw: Option<Vec<u8>> = self.with_conn(|c| Ok(redis::cmd("GET").arg(&k).query(c)?))?;
        Ok(match raw {
            None => Loaded::Missing,
            Some(bytes) => state::parse(&bytes, now),
        })
    }

    /// True when `key` holds a value.
    pub fn exists(&self, key: &LockKey) -> Result<bool> {
        let k = self.key_of(key);
        let n: u64 = self.with_conn(|c| Ok(redis::cmd("EXISTS").arg(&k).query(c)?))?;
        Ok(n > 0)
    }

    /// Stores a new value under a key nobody else can know yet (a fresh challenge id).
    pub fn put<T: Serialize>(&self, key: &LockKey, value: &T, expiry: Expiry) -> Result<()> {
        let k = self.key_of(key);
        let text = state::to_text(&self.virtual_path(&k), value)?;
        self.with_conn(|c| Ok(set(&k, text, expiry).exec(c)?))
    }

    /// The atomic read-decide-write of `key`: `decide` gets the current value (`None` when
    /// there is none, or when the stored one failed validation, which is then logged with
    /// its reason and removed or overwritten) and returns what to change and what to
    /// answer. It may run more than once, each time on a newer value; only the round whose
    /// change committed gives the answer.
    ///
    /// The first round is optimistic. A round lost to another writer means the key is
    /// contended, and in a burst of many processes on two cores most of them sit between
    /// their read and their `EXEC` at once, so optimistic retries mostly lose again
    /// (measured: 64 processes on one key, a quarter of them ran out of the wait). From
    /// the second round on, a process therefore first takes the key's lock in Redis,
    /// `{prefix}lock_{key}` (`SET NX PX`, polled like the file lock; the same scheme as
    /// symfony/lock's RedisStore), so that the contenders queue instead of colliding.
    /// Correctness never rests on that lock: every round is still a `WATCH`ed
    /// transaction, so a lock that expired under a stalled holder can cost a round, never
    /// an update. Optimistic rounds step aside while the lock is held.
    pub fn update<T, R>(
        &self,
        key: &LockKey,
        now: u64,
        trigger: TriggerReason,
        mut decide: impl FnMut(Option<&T>) -> (Change<T>, R),
    ) -> Result<R>
    where
        T: DeserializeOwned + Validate + Serialize,
    {
        let k = self.key_of(key);
        let lock = format!("{}lock_{}", self.prefix, key.as_str());
        let path = self.virtual_path(&k);
        let start = Instant::now();
        let wait = self.wait;
        let timeout = || {
            Failure::Ours(Error::LockTimeout {
                key: key.as_str().to_string(),
                waited_ms: wait.as_millis() as u64,
            })
        };
        self.with_conn(|c| {
            let mut held: Option<String> = None;
            let mut round = 0u32;
            let outcome = loop {
                if round > 0 && held.is_none() {
                    match self.take_lock(c, &lock, start) {
                        Ok(Some(token)) => held = Some(token),
                        Ok(None) => break Err(timeout()),
                        Err(e) => break Err(e),
                    }
                }
                let step = Round {
                    key: &k,
                    lock: &lock,
                    path: &path,
                    holding: held.is_some(),
                    now,
                    trigger,
                };
                match self.round(c, &step, &mut decide) {
                    Ok(Some(answer)) => break Ok(answer),
                    Ok(None) => {}
                    Err(e) => break Err(e),
                }
                round += 1;
                if start.elapsed() >= wait {
                    tracing::warn!(key = %k, rounds = round, "shared store key contended for the whole wait");
                    break Err(timeout());
                }
            };
            if let Some(token) = held {
                // Only our own lock goes: compare and delete in one step on the server.
                redis::cmd("EVAL")
                    .arg(RELEASE_LOCK)
                    .arg(2)
                    .arg(&lock)
                    .arg(format!("{lock}:wake"))
                    .arg(token)
                    .arg(self.lock_ttl_ms())
                    .exec(c)?;
            }
            outcome
        })
    }

    /// How long a lock (and its wake-up list) lives without its holder: one wait plus
    /// one command timeout.
    fn lock_ttl_ms(&self) -> u64 {
        (self.wait + self.command_timeout).as_millis().max(1) as u64
    }

    /// One `WATCH`ed read-decide-write. `Ok(None)`: the round was lost (another writer
    /// came first, or the key's lock is held by another process while we hold none).
    fn round<T, R>(
        &self,
        c: &mut redis::Connection,
        step: &Round<'_>,
        decide: &mut impl FnMut(Option<&T>) -> (Change<T>, R),
    ) -> Result<Option<R>, Failure>
    where
        T: DeserializeOwned + Validate + Serialize,
    {
        let k = step.key;
        redis::cmd("WATCH").arg(k).exec(c)?;
        let (raw, locked): (Option<Vec<u8>>, Option<Vec<u8>>) =
            redis::cmd("MGET").arg(k).arg(step.lock).query(c)?;
        if locked.is_some() && !step.holding {
            redis::cmd("UNWATCH").exec(c)?;
            return Ok(None);
        }
        let (current, invalid) = match raw.clone().map(|b| state::parse::<T>(&b, step.now)) {
            None | Some(Loaded::Missing) => (None, false),
            Some(Loaded::Valid(v)) => (Some(v), false),
            Some(Loaded::Invalid(reason)) => {
                tracing::warn!(key = %k, reason, trigger = ?step.trigger, "state reset");
                (None, true)
            }
        };
        let (change, answer) = decide(current.as_ref());
        let mut tx = redis::pipe();
        tx.atomic();
        match &change {
            Change::Keep if !invalid => {
                redis::cmd("UNWATCH").exec(c)?;
                return Ok(Some(answer));
            }
            Change::Keep | Change::Delete => {
                tx.cmd("DEL").arg(k).ignore();
            }
            Change::Put(value, expiry) => {
                let text = state::to_text(step.path, value).map_err(Failure::Ours)?;
                // A value that failed validation has no TTL worth keeping.
                let expiry = match expiry {
                    Expiry::Unchanged if invalid => Expiry::Never,
                    e => *e,
                };
                tx.add_command(set(k, text, expiry)).ignore();
            }
        }
        self.race_hook(k, raw.as_deref())?;
        // EXEC answers nil when the watched key changed since WATCH.
        let committed: Option<()> = tx.query(c)?;
        Ok(committed.map(|()| answer))
    }

    /// Takes `lock` for this process, waiting for releases until the wait that began at
    /// `start` is over; `Ok(None)` when it stayed held. The lock expires by itself after
    /// the wait plus one command timeout, so a holder killed with it costs the others one
    /// wait at most. (Polling every few milliseconds instead of waiting for a release left
    /// 60 to 86 of 320 requests of a 64-process burst without the lock.)
    fn take_lock(
        &self,
        c: &mut redis::Connection,
        lock: &str,
        start: Instant,
    ) -> Result<Option<String>, Failure> {
        let token = crate::random::bytes::<16>()
            .map(|b| crate::random::hex(&b))
            .map_err(Failure::Ours)?;
        let ttl_ms = self.lock_ttl_ms();
        loop {
            let taken: Option<String> = redis::cmd("SET")
                .arg(lock)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query(c)?;
            if taken.is_some() {
                return Ok(Some(token));
            }
            let left = self.wait.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Ok(None);
            }
            // Wait to be woken by the holder's release (a waiting queue on the server,
            // first come first woken, like the kernel's for flock), but never longer than
            // 20 ms at a time: a holder that died wakes nobody, and its lock expires.
            let nap = left.min(Duration::from_millis(20)).as_secs_f64();
            let _: Option<(String, String)> = redis::cmd("BLPOP")
                .arg(format!("{lock}:wake"))
                .arg(format!("{nap:.3}"))
                .query(c)?;
        }
    }

    /// Test builds only (feature `test-hooks`, env `FORMWARDEN_TEST_STORE_RACE`): another
    /// writer rewrites the key with the value just read, between the read and the `EXEC`,
    /// in every round, as a storm of other nodes would; the value stays the same, but the
    /// `WATCH` sees a write, so every round is refused and the lock-wait bound is what
    /// ends the operation.
    #[cfg(feature = "test-hooks")]
    fn race_hook(&self, key: &str, raw: Option<&[u8]>) -> Result<(), Failure> {
        if std::env::var_os("FORMWARDEN_TEST_STORE_RACE").is_none() {
            return Ok(());
        }
        let mut other = self.client.get_connection()?;
        match raw {
            Some(v) => redis::cmd("SET")
                .arg(key)
                .arg(v)
                .arg("KEEPTTL")
                .exec(&mut other)?,
            None => redis::cmd("DEL").arg(key).exec(&mut other)?,
        }
        Ok(())
    }

    #[cfg(not(feature = "test-hooks"))]
    fn race_hook(&self, _: &str, _: Option<&[u8]>) -> Result<(), Failure> {
        Ok(())
    }

    /// A name for `key` in serialization errors, which take a path.
    fn virtual_path(&self, key: &str) -> PathBuf {
        PathBuf::from(format!("{}#{key}", self.shown_url))
    }
}

/// `SET key text` with the TTL `expiry` asks for.
fn set(key: &str, text: String, expiry: Expiry) -> redis::Cmd {
    let mut cmd = redis::cmd("SET");
    cmd.arg(key).arg(text);
    match expiry {
        Expiry::After(s) => {
            cmd.arg("EX").arg(s.max(1));
        }
        Expiry::Unchanged => {
            cmd.arg("KEEPTTL");
        }
        Expiry::Never => {}
    }
    cmd
}

/// One round's key, lock and context (see [`RedisStore::update`]).
struct Round<'a> {
    key: &'a str,
    lock: &'a str,
    path: &'a Path,
    holding: bool,
    now: u64,
    trigger: TriggerReason,
}

/// Deletes the lock `KEYS[1]` only if it still holds our token `ARGV[1]` (a lock that
/// expired and was taken by another process stays theirs), and then wakes one waiter
/// through the list `KEYS[2]`, which holds at most one wake-up and expires after
/// `ARGV[2]` ms.
const RELEASE_LOCK: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     redis.call('DEL', KEYS[1]); redis.call('RPUSH', KEYS[2], '1'); \
     redis.call('LTRIM', KEYS[2], -1, -1); redis.call('PEXPIRE', KEYS[2], ARGV[2]); \
     return 1 else return 0 end";

/// What went wrong inside one connection's work: the connection's fault (it is dropped)
/// or ours (a lock-timeout-like bound, a value that cannot be serialized).
enum Failure {
    Redis(redis::RedisError),
    Ours(Error),
}

impl From<redis::RedisError> for Failure {
    fn from(e: redis::RedisError) -> Self {
        Failure::Redis(e)
    }
}
