//! The filesystem seam: every file operation of the library — open, read, list, look up,
//! create a folder, create a temp file, write, fsync, rename, link, unlink and flock —
//! is one call here, and nowhere else (`shared/clippy.toml` refuses the `std::fs` and
//! tempfile calls everywhere but here; `lock` keeps its own flock waiting machinery but
//! passes every attempt through [`checkpoint`] first). The seam adds no policy: it never
//! retries, never hides an error and never decides what a path means; `atomic`, `lock`
//! and `state` do that above it.
//!
//! What it adds is a count. Each call is one numbered *step* of the process. A test build
//! (feature `test-hooks`, never in a release package) reads a fault plan from its
//! environment once and can then, at step N:
//! - `FORMWARDEN_TEST_IO_FAULT=N` fail that one step with `EIO`, and `N+` fail it and
//!   every later one (a disk that went away);
//! - with `FORMWARDEN_TEST_IO_ERRNO=ENOSPC` (or `EACCES`, `EROFS`) fail with that error
//!   instead (a full disk, a permission taken away, a read-only remount);
//! - `FORMWARDEN_TEST_IO_KILL=N` kill the process with SIGKILL before the step runs (a
//!   crash at that point: nothing after it happens, no destructor runs);
//! - `FORMWARDEN_TEST_IO_TRACE=1` print every step (`fsio step N: op path`) to stderr.
//!
//! A fired fault is announced on stderr (`fsio: injected EIO at step N: op path`), so the
//! suite's sweeps (tests/io_faults.rs, tests/crashes.rs) know whether a run reached its
//! fault: they raise N until a run completes without reaching it. A release build has no
//! plan: [`checkpoint`] is an empty inline function there.

#![allow(
    clippy::disallowed_methods,
    reason = "this is the filesystem seam, the one module that calls std::fs and tempfile"
)]

use std::fs::{File, Metadata, OpenOptions, ReadDir};
use std::io::{self, Read, Write};
use std::path::Path;

/// Marks one I/O step: in a test build, counts it and applies the fault plan; in a
/// release build, nothing. `lock` calls it before each flock attempt.
#[inline(always)]
pub(crate) fn checkpoint(op: &'static str, path: &Path) -> io::Result<()> {
    plan::step(op, path)
}

/// Reads a whole file.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    checkpoint("read", path)?;
    std::fs::read(path)
}

/// Reads a whole file as UTF-8 text.
pub fn read_to_string(path: &Path) -> io::Result<String> {
    checkpoint("read", path)?;
    std::fs::read_to_string(path)
}

/// Reads at most `limit` bytes of a file as UTF-8 text (more is the caller's error to
/// report: it gets `limit + 1` bytes back to tell).
pub fn read_to_string_at_most(path: &Path, limit: u64) -> io::Result<String> {
    checkpoint("read", path)?;
    let mut text = String::new();
    File::open(path)?
        .take(limit.saturating_add(1))
        .read_to_string(&mut text)?;
    Ok(text)
}

/// Opens a folder's listing.
pub fn read_dir(dir: &Path) -> io::Result<ReadDir> {
    checkpoint("list", dir)?;
    std::fs::read_dir(dir)
}

/// Looks a path up without following a final symlink.
pub fn symlink_metadata(path: &Path) -> io::Result<Metadata> {
    checkpoint("stat", path)?;
    std::fs::symlink_metadata(path)
}

/// Looks a path up, following symlinks.
pub fn metadata(path: &Path) -> io::Result<Metadata> {
    checkpoint("stat", path)?;
    std::fs::metadata(path)
}

/// True when something exists at `path` (following symlinks); a failed look-up counts as
/// absent, as with `Path::exists`.
pub fn exists(path: &Path) -> bool {
    metadata(path).is_ok()
}

/// True when `path` is a folder (following symlinks).
pub fn is_dir(path: &Path) -> bool {
    metadata(path).is_ok_and(|m| m.is_dir())
}

/// Looks up the file behind an open handle.
pub fn file_metadata(file: &File, path: &Path) -> io::Result<Metadata> {
    checkpoint("fstat", path)?;
    file.metadata()
}

/// Creates a folder and whatever is missing above it.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    checkpoint("mkdir", dir)?;
    std::fs::create_dir_all(dir)
}

/// Creates a uniquely named temp file in `dir` whose name starts with `prefix`.
pub fn temp_file_in(dir: &Path, prefix: &str) -> io::Result<tempfile::NamedTempFile> {
    checkpoint("create", dir)?;
    tempfile::Builder::new().prefix(prefix).tempfile_in(dir)
}

/// Writes all of `bytes` to `file` (known to the caller as `path`).
pub fn write_all(file: &mut impl Write, path: &Path, bytes: &[u8]) -> io::Result<()> {
    checkpoint("write", path)?;
    file.write_all(bytes)
}

/// Fsyncs an open file's data and metadata.
pub fn sync_file(file: &File, path: &Path) -> io::Result<()> {
    checkpoint("fsync", path)?;
    file.sync_all()
}

/// Fsyncs a folder, so that a rename or unlink in it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    checkpoint("fsync dir", dir)?;
    File::open(dir)?.sync_all()
}

/// Renames a temp file over `to` (replacing what is there).
pub fn persist(tmp: tempfile::NamedTempFile, to: &Path) -> io::Result<()> {
    checkpoint("rename", to)?;
    tmp.persist(to).map(drop).map_err(|e| e.error)
}

/// Gives a temp file the name `to`, failing if `to` exists.
pub fn persist_noclobber(tmp: tempfile::NamedTempFile, to: &Path) -> io::Result<()> {
    checkpoint("link", to)?;
    tmp.persist_noclobber(to).map(drop).map_err(|e| e.error)
}

/// Renames `from` to `to`.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    checkpoint("rename", from)?;
    std::fs::rename(from, to)
}

/// Unlinks a file.
pub fn remove_file(path: &Path) -> io::Result<()> {
    checkpoint("unlink", path)?;
    std::fs::remove_file(path)
}

/// Opens (creating if needed, never truncating) a lock file for reading and writing.
pub fn open_lock_file(path: &Path) -> io::Result<File> {
    checkpoint("open", path)?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// Opens a file for writing without creating it (`/dev/null` for a detached process).
pub fn open_existing_for_write(path: &Path) -> io::Result<File> {
    checkpoint("open", path)?;
    OpenOptions::new().write(true).open(path)
}

#[cfg(feature = "test-hooks")]
mod plan {
    //! The test build's fault plan (see the module header).
    use std::io;
    use std::path::Path;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// What the environment asked for.
    #[derive(Debug, Default)]
    struct Plan {
        /// Fail this step with EIO.
        fail_at: Option<u64>,
        /// ... and every later one too.
        fail_on: bool,
        /// SIGKILL the process before this step.
        kill_at: Option<u64>,
        /// Print every step.
        trace: bool,
        /// The error a failed step returns, and its name.
        errno: (libc::c_int, &'static str),
        /// A copy of the process's first stderr, where announcements go: a CGI process
        /// points fd 2 at `/dev/null` once it has answered (`run`), and the steps after
        /// that must still be heard.
        announce: libc::c_int,
    }

    fn plan() -> &'static Plan {
        static PLAN: OnceLock<Plan> = OnceLock::new();
        PLAN.get_or_init(|| {
            let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
            let mut p = Plan::default();
            if let Some(v) = var("FORMWARDEN_TEST_IO_FAULT") {
                let (n, on) = match v.strip_suffix('+') {
                    Some(n) => (n, true),
                    None => (v.as_str(), false),
                };
                p.fail_at = n.parse().ok();
                p.fail_on = on;
            }
            p.errno = match var("FORMWARDEN_TEST_IO_ERRNO").as_deref() {
                Some("ENOSPC") => (libc::ENOSPC, "ENOSPC"),
                Some("EACCES") => (libc::EACCES, "EACCES"),
                Some("EROFS") => (libc::EROFS, "EROFS"),
                _ => (libc::EIO, "EIO"),
            };
            p.kill_at = var("FORMWARDEN_TEST_IO_KILL").and_then(|v| v.parse().ok());
            p.trace = var("FORMWARDEN_TEST_IO_TRACE").is_some();
            p.announce = if p.fail_at.is_some() || p.kill_at.is_some() || p.trace {
                // SAFETY: dup(2) of our own stderr; the copy lives as long as the process.
                unsafe { libc::dup(2) }
            } else {
                -1
            };
            p
        })
    }

    /// Writes one line to the saved stderr.
    fn announce(p: &Plan, line: &str) {
        if p.announce < 0 {
            return;
        }
        let line = format!("{line}\n");
        // SAFETY: write(2) of a live buffer to a descriptor this module owns.
        unsafe {
            libc::write(p.announce, line.as_ptr().cast(), line.len());
        }
    }

    /// Steps taken by this process so far.
    static STEPS: AtomicU64 = AtomicU64::new(0);

    pub(super) fn step(op: &'static str, path: &Path) -> io::Result<()> {
        let p = plan();
        if p.fail_at.is_none() && p.kill_at.is_none() && !p.trace {
            return Ok(());
        }
        let n = STEPS.fetch_add(1, Ordering::SeqCst) + 1;
        if p.trace {
            announce(p, &format!("fsio step {n}: {op} {}", path.display()));
        }
        if p.kill_at == Some(n) {
            announce(
                p,
                &format!("fsio: SIGKILL at step {n}: {op} {}", path.display()),
            );
            // SAFETY: kill(2) on our own pid; it does not return.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
        let fails = match p.fail_at {
            Some(at) if p.fail_on => n >= at,
            Some(at) => n == at,
            None => false,
        };
        if fails {
            announce(
                p,
                &format!(
                    "fsio: injected {} at step {n}: {op} {}",
                    p.errno.1,
                    path.display()
                ),
            );
            return Err(io::Error::from_raw_os_error(p.errno.0));
        }
        Ok(())
    }
}

#[cfg(not(feature = "test-hooks"))]
mod plan {
    //! A release build has no fault plan.
    #[inline(always)]
    pub(super) fn step(_: &'static str, _: &std::path::Path) -> std::io::Result<()> {
        Ok(())
    }
}
