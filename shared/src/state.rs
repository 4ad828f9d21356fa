//! Reading state files (the seed's `StateReader`/`StateValidator`) and resetting bad ones
//! (its `ResetExecutor`). Every read parses and validates what it found; missing state is a
//! normal "fresh" answer, while unparsable or out-of-range state is reset here, with a
//! logged reason, never silently. Writes go through [`crate::atomic`]. This module never
//! takes locks: a caller that writes holds the key's lock already; lock-free readers (token
//! verification) only read.
//!
//! Every service has the same shape: a [`TriggerReason`] says why it runs, a pure
//! `decide` function (the decision policy) turns the validated state into an action plan,
//! and the plan is executed inside the lock runner.

use crate::atomic;
use crate::error::{Error, Result};
use crate::lock::{LockKey, LockRunner};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a service runs; recorded in log lines about state changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerReason {
    /// A CAPTCHA image was requested.
    CaptchaGet,
    /// A contact form was posted.
    ContactPost,
    /// A token rotation was asked for (CLI or HTTP).
    TokenRotate,
    /// A token revocation was asked for.
    TokenRevoke,
    /// Expired state is being swept.
    Sweep,
    /// The mail retry command runs.
    MailRetry,
}

/// Checks a parsed state value against its invariants.
pub trait Validate {
    /// `Err(reason)` when the value cannot be trusted (e.g. a time stamp in the future).
    fn validate(&self, now: u64) -> std::result::Result<(), String>;
}

/// What a read found.
#[derive(Debug)]
pub enum Loaded<T> {
    /// No file: the caller starts fresh.
    Missing,
    /// A file that parsed and validated.
    Valid(T),
    /// A file that cannot be trusted, with the reason.
    Invalid(String),
}

/// Reads and validates the state file at `path`.
pub fn read<T: DeserializeOwned + Validate>(path: &Path, now: u64) -> Result<Loaded<T>> {
    Ok(match read_raw(path)? {
        None => Loaded::Missing,
        Some(bytes) => parse(&bytes, now),
    })
}

/// The bytes of the state file at `path`; `None` when there is none.
fn read_raw(path: &Path) -> Result<Option<Vec<u8>>> {
    match crate::fsio::read(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// Parses and validates stored state (a file's bytes, or a shared store's value).
pub fn parse<T: DeserializeOwned + Validate>(bytes: &[u8], now: u64) -> Loaded<T> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Loaded::Invalid("not UTF-8".into());
    };
    let value: T = match toml::from_str(text) {
        Ok(v) => v,
        Err(e) => return Loaded::Invalid(format!("unparsable: {}", e.message())),
    };
    match value.validate(now) {
        Ok(()) => Loaded::Valid(value),
        Err(reason) => Loaded::Invalid(reason),
    }
}

/// Rounds of [`update_durable`]'s optimistic path before it does the update under the lock.
const OPTIMISTIC_ROUNDS: usize = 64;

/// A durable read-modify-write of `path` under `key` that keeps the fsync out of the
/// critical section: read the state without the lock, compute `change`, write and fsync
/// the new version into a temp file, then take the lock, check that the file is still
/// byte for byte what was read, and only rename. If another writer came first, the round
/// starts over from its result (nothing is lost: every round builds on what is on disk).
/// After [`OPTIMISTIC_ROUNDS`] rounds, with too little of the request's time left, or when
/// the state needs a reset, the whole update runs under the lock as before. Returns the
/// value written.
pub fn update_durable<T>(
    path: &Path,
    locks: &LockRunner,
    key: &LockKey,
    now: u64,
    trigger: TriggerReason,
    change: impl Fn(&T) -> T,
) -> Result<T>
where
    T: Serialize + DeserializeOwned + Validate + Default,
{
    for _ in 0..OPTIMISTIC_ROUNDS {
        if crate::deadline::remaining().is_some_and(|left| left < Duration::from_secs(2)) {
            break;
        }
        let snapshot = read_raw(path)?;
        let current = match &snapshot {
            None => T::default(),
            Some(bytes) => match parse::<T>(bytes, now) {
                Loaded::Valid(v) => v,
                // Resetting is a write: the locked path does it, with its log line.
                _ => break,
            },
        };
        let next = change(&current);
        let prepared = atomic::prepare(path, to_text(path, &next)?.as_bytes())?;
        let committed = locks.run(key, || {
            if read_raw(path)? == snapshot {
                prepared.commit(b"")?;
                Ok(true)
            } else {
                Ok(false)
            }
        })?;
        if committed {
            return Ok(next);
        }
    }
    locks.run(key, || {
        let current = read_or_reset::<T>(path, now, trigger)?.unwrap_or_default();
        let next = change(&current);
        write(path, &next)?;
        Ok(next)
    })
}

/// How much a write must survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Must survive a power cut: fsync the file and the folder (tokens, spool, markers).
    Durable,
    /// Short-lived state in `var/tmp/` (challenges, rate-limit windows): atomic rename
    /// only. Losing the last change in a power cut costs a visitor one new image or
    /// grants a client a few extra requests; waiting for the disk inside a contended lock
    /// would cost every visitor in a burst (see ARCHITECTURE.md for the figures).
    Ephemeral,
}

/// The stored form of `value` (TOML); `path` names it in the error.
pub fn to_text<T: Serialize>(path: &Path, value: &T) -> Result<String> {
    toml::to_string(value).map_err(|e| {
        Error::io(
            "serialize",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
        )
    })
}

/// Serializes `value` into a new file at `path`, durably, failing if the file exists.
pub fn create<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    atomic::create_new(path, to_text(path, value)?.as_bytes())
}

/// Serializes `value` and writes it atomically and durably to `path`.
pub fn write<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    write_with(path, value, Durability::Durable)
}

/// Serializes `value` into a staged temp file (see `atomic::stage`) and renames it into
/// place: an ephemeral write whose file creation happened before the lock.
pub fn commit_staged<T: Serialize>(staged: atomic::Pending, path: &Path, value: &T) -> Result<()> {
    staged.commit(to_text(path, value)?.as_bytes())
}

/// Serializes `value` and writes it atomically to `path` with the given durability.
pub fn write_with<T: Serialize>(path: &Path, value: &T, durability: Durability) -> Result<()> {
    let text = to_text(path, value)?;
    match durability {
        Durability::Durable => atomic::write(path, text.as_bytes()),
        Durability::Ephemeral => atomic::write_ephemeral(path, text.as_bytes()),
    }
}

/// The reset executor: removes state that failed validation and logs why. The caller then
/// proceeds as if the state were missing (and writes fresh state under the same lock).
pub fn reset(path: &Path, reason: &str, trigger: TriggerReason) -> Result<()> {
    tracing::warn!(path = %path.display(), reason, ?trigger, "state reset");
    atomic::remove(path)
}

/// Reads `path`, resetting it when it is invalid; `None` means "start fresh".
pub fn read_or_reset<T: DeserializeOwned + Validate>(
    path: &Path,
    now: u64,
    trigger: TriggerReason,
) -> Result<Option<T>> {
    match read::<T>(path, now)? {
        Loaded::Missing => Ok(None),
        Loaded::Valid(v) => Ok(Some(v)),
        Loaded::Invalid(reason) => {
            reset(path, &reason, trigger)?;
            Ok(None)
        }
    }
}

/// One state file found by [`list`].
#[derive(Debug, Clone)]
pub struct Listed {
    /// Its path.
    pub path: PathBuf,
    /// Its name without the suffix.
    pub stem: String,
}

impl Listed {
    /// Last modification, as Unix seconds (0 when unknown). Asked only when needed: most
    /// listings only count or name their files, and a stat per file would be I/O on a
    /// visitor's request for nothing.
    pub fn modified(&self) -> u64 {
        crate::fsio::symlink_metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs())
    }
}

/// The state files in `dir` whose names end in `suffix`, temp files left out. A missing
/// folder is empty.
pub fn list(dir: &Path, suffix: &str) -> Result<Vec<Listed>> {
    let rd = match crate::fsio::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(suffix) else {
            continue;
        };
        if name.starts_with(atomic::TEMP_PREFIX) {
            continue;
        }
        out.push(Listed {
            path: entry.path(),
            stem: stem.to_string(),
        });
    }
    Ok(out)
}

/// True when a file exists at `path` (no lock needed: it answers for this instant only).
pub fn exists(path: &Path) -> Result<bool> {
    match crate::fsio::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("look up", path, e)),
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    t + test_clock_skew()
}

/// Test builds only (feature `test-hooks`): seconds added to the clock, from the process
/// environment's `FORMWARDEN_TEST_CLOCK_SKEW`, so the suite can let challenges, windows and
/// backoffs expire without sleeping. Release builds have no such switch.
#[cfg(feature = "test-hooks")]
fn test_clock_skew() -> u64 {
    static SKEW: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SKEW.get_or_init(|| {
        std::env::var("FORMWARDEN_TEST_CLOCK_SKEW")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    })
}

#[cfg(not(feature = "test-hooks"))]
fn test_clock_skew() -> u64 {
    0
}

/// State time stamps may run ahead of our clock by this much (clock steps between
/// processes); anything further in the future is invalid.
pub const CLOCK_SLACK: u64 = 300;
