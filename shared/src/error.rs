//! The library's one error type. Every variant carries the path, key or setting it is
//! about, so that the operator's log line alone says what went wrong and where. This module
//! never decides how an error is shown to a visitor: the endpoint layer maps errors to HTTP
//! answers.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Everything that can fail inside formwarden.
#[derive(Debug)]
pub enum Error {
    /// `var/config/config.toml` does not exist (or the runtime root was not found).
    ConfigMissing {
        /// The config file that was looked for.
        path: PathBuf,
    },
    /// The config exists but a key is unknown, has the wrong type or is out of range.
    ConfigInvalid {
        /// The config file.
        path: PathBuf,
        /// The offending key, dotted for sections (`mail.smtp.port`).
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A file-system call failed; `op` names the call, `path` the file it was about.
    Io {
        /// The call that failed (`rename onto`, `flock`, …).
        op: &'static str,
        /// The file it was about.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The lock for `key` was still held when the configured wait ran out.
    LockTimeout {
        /// The normalized lock key.
        key: String,
        /// The configured wait bound.
        waited_ms: u64,
    },
    /// The operating system refused to give us random bytes.
    Random(String),
    /// Input named something that cannot exist (a hostile profile name, say).
    InvalidInput {
        /// What kind of input.
        what: &'static str,
        /// Why it was refused.
        detail: String,
    },
    /// A named thing (token profile, challenge) is not configured or not present.
    NotFound {
        /// What kind of thing.
        what: &'static str,
        /// Its name as given.
        name: String,
    },
    /// The CAPTCHA image could not be rendered.
    Render(String),
    /// A configured ceiling on stored state is reached (a flood); temporary.
    Full {
        /// What is full.
        what: &'static str,
        /// The configured ceiling.
        limit: usize,
    },
    /// The shared store (Redis) did not answer, or answered with an error.
    Store {
        /// Its URL without credentials.
        url: String,
        /// What failed.
        detail: String,
    },
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an `io::Error` with the operation and the path it happened on.
    pub fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Builds a config error for `key`.
    pub fn config(path: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::ConfigInvalid {
            path: path.to_path_buf(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// True when the error is worth retrying later (503 with `Retry-After`) rather than a
    /// broken installation (500).
    pub fn is_temporary(&self) -> bool {
        match self {
            Error::LockTimeout { .. } | Error::Full { .. } | Error::Store { .. } => true,
            // tempfile wraps its errors with the path, which hides the raw errno but keeps
            // the kind, so both are checked.
            Error::Io { source, .. } => {
                matches!(
                    source.kind(),
                    std::io::ErrorKind::StorageFull
                        | std::io::ErrorKind::QuotaExceeded
                        | std::io::ErrorKind::WouldBlock
                ) || matches!(
                    source.raw_os_error(),
                    Some(libc::ENOSPC | libc::EDQUOT | libc::EAGAIN)
                )
            }
            _ => false,
        }
    }

    /// The `Retry-After` seconds of a temporary error: a lock is free again within a
    /// second; a shared store that went away is usually back within seconds (a restart or
    /// a failover); a full disk or ceiling needs longer.
    pub fn retry_after(&self) -> u64 {
        match self {
            Error::LockTimeout { .. } => 1,
            Error::Store { .. } => 5,
            _ => 60,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ConfigMissing { path } => write!(
                f,
                "config file {} not found: copy var/config/config.example.toml to it and set ip_salt",
                path.display()
            ),
            Error::ConfigInvalid { path, key, message } => {
                write!(f, "config {}: key `{key}`: {message}", path.display())
            }
            Error::Io { op, path, source } => write!(f, "{op} {}: {source}", path.display()),
            // The wording is the seed's contract; operators grep for it.
            Error::LockTimeout { key, waited_ms } => {
                write!(f, "Lock-Timeout nach {waited_ms}ms: {key}")
            }
            Error::Random(m) => write!(f, "no randomness from the operating system: {m}"),
            Error::InvalidInput { what, detail } => write!(f, "invalid {what}: {detail}"),
            Error::NotFound { what, name } => write!(f, "unknown {what}: {name}"),
            Error::Render(m) => write!(f, "CAPTCHA image: {m}"),
            Error::Full { what, limit } => {
                write!(f, "{what} at their configured ceiling of {limit}")
            }
            Error::Store { url, detail } => write!(
                f,
                "shared store {url}: {detail} (rate limits, CAPTCHAs and tokens are unavailable until it answers)"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
