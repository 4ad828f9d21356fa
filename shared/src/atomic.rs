//! The atomic writer (the seed's `AtomicWriter`): the only code in formwarden that replaces,
//! creates, moves or removes a state file (lock files excepted: the lock runner unlinks
//! those it holds; `shared/clippy.toml` keeps the rest to this module). A write goes to a
//! unique temp file in the target's folder, is fsynced, renamed over the target and the
//! folder is fsynced, so a reader sees the old or the new file, never a half, and a crash
//! leaves at most a `.tmp-*` file for the sweep.
//! This module never takes locks: callers run it inside the lock runner.
//!
//! Inside [`crate::lock::LockRunner::run`] the final folder fsync is deferred until just
//! after the lock is released (but before the caller sees success): the new file is
//! already visible to the next holder, and the folder fsync, the slowest step on ext4,
//! then no longer lengthens everyone's wait in a burst. Journal order keeps a later
//! holder's committed rename from overtaking ours.

//!
//! Every file operation here is a call into the filesystem seam (`fsio`), which a test
//! build counts and can fail or crash at any step.

use crate::error::{Error, Result};
use crate::fsio;
use std::cell::RefCell;
use std::path::{Path, PathBuf};

thread_local! {
    /// Folders whose fsync waits for the end of the current locked section; `None` when no
    /// locked section is running on this thread.
    static DEFERRED: RefCell<Option<Vec<PathBuf>>> = const { RefCell::new(None) };
}

/// Runs `f` with folder fsyncs deferred; returns its result and the folders to sync.
/// Nested calls leave the deferral to the outermost one.
pub(crate) fn deferring_dir_syncs<T>(f: impl FnOnce() -> T) -> (T, Vec<PathBuf>) {
    let outermost = DEFERRED.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(Vec::new());
            true
        } else {
            false
        }
    });
    let out = f();
    let dirs = if outermost {
        DEFERRED.with(|d| d.borrow_mut().take()).unwrap_or_default()
    } else {
        Vec::new()
    };
    (out, dirs)
}

/// Fsyncs folders collected by [`deferring_dir_syncs`].
pub(crate) fn sync_dirs(dirs: &[PathBuf]) -> Result<()> {
    dirs.iter().try_for_each(|d| sync_dir(d))
}

/// Fsyncs `dir` now, or at the end of the running locked section.
fn sync_dir_soon(dir: &Path) -> Result<()> {
    let deferred = DEFERRED.with(|d| match d.borrow_mut().as_mut() {
        Some(v) => {
            if !v.iter().any(|p| p == dir) {
                v.push(dir.to_path_buf());
            }
            true
        }
        None => false,
    });
    if deferred { Ok(()) } else { sync_dir(dir) }
}

/// Creates `dir` (and what is missing above it): a shard's sub-folder on first use.
pub(crate) fn create_dir(dir: &Path) -> Result<()> {
    fsio::create_dir_all(dir).map_err(|e| Error::io("create folder", dir, e))
}

/// Prefix of temp files; sweeps remove old ones left by killed processes.
pub const TEMP_PREFIX: &str = ".tmp-";

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Fsyncs a folder so that a rename or unlink in it survives a crash.
fn sync_dir(dir: &Path) -> Result<()> {
    fsio::sync_dir(dir).map_err(|e| Error::io("fsync dir", dir, e))
}

fn write_temp(path: &Path, bytes: &[u8]) -> Result<tempfile::NamedTempFile> {
    write_temp_with(path, bytes, true)
}

fn write_temp_with(path: &Path, bytes: &[u8], sync: bool) -> Result<tempfile::NamedTempFile> {
    let dir = parent(path);
    let temp = || fsio::temp_file_in(dir, TEMP_PREFIX);
    let mut tmp = match temp() {
        // A shard's sub-folder is made on first use (see `shard`).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_dir(dir)?;
            temp()
        }
        other => other,
    }
    .map_err(|e| Error::io("create temp file in", dir, e))?;
    let path = tmp.path().to_path_buf();
    fsio::write_all(&mut tmp, &path, bytes)
        .and_then(|()| {
            if sync {
                fsio::sync_file(tmp.as_file(), &path)
            } else {
                Ok(())
            }
        })
        .map_err(|e| Error::io("write", &path, e))?;
    Ok(tmp)
}

/// A temp file beside a state file, made before the state's lock is taken, so that the
/// critical section only renames it (after, for ephemeral state, writing a few bytes into
/// it): no file creation, and for durable state no fsync, while others wait. Dropping it
/// instead of committing removes the temp file.
#[derive(Debug)]
pub struct Pending {
    tmp: tempfile::NamedTempFile,
    target: PathBuf,
    durable: bool,
}

/// Durable: writes and fsyncs `bytes` for `path` now; [`Pending::commit`] then renames it
/// and fsyncs the folder (deferred to the end of the locked section, like [`write`]).
pub fn prepare(path: &Path, bytes: &[u8]) -> Result<Pending> {
    Ok(Pending {
        tmp: write_temp(path, bytes)?,
        target: path.to_path_buf(),
        durable: true,
    })
}

/// Ephemeral: an empty temp file for `path`; [`Pending::commit`] writes the bytes and
/// renames it without any fsync (like [`write_ephemeral`]).
pub fn stage(path: &Path) -> Result<Pending> {
    Ok(Pending {
        tmp: write_temp_with(path, b"", false)?,
        target: path.to_path_buf(),
        durable: false,
    })
}

impl Pending {
    /// Appends `bytes` (empty for a prepared file) and renames the file over its target.
    pub fn commit(mut self, bytes: &[u8]) -> Result<()> {
        if !bytes.is_empty() {
            let path = self.tmp.path().to_path_buf();
            fsio::write_all(&mut self.tmp, &path, bytes)
                .map_err(|e| Error::io("write", &path, e))?;
        }
        let target = self.target;
        fsio::persist(self.tmp, &target).map_err(|e| Error::io("rename onto", &target, e))?;
        if self.durable {
            sync_dir_soon(parent(&target))
        } else {
            Ok(())
        }
    }
}

/// Replaces `path` with `bytes`: temp → write → fsync → rename → fsync(dir).
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = write_temp(path, bytes)?;
    fsio::persist(tmp, path).map_err(|e| Error::io("rename onto", path, e))?;
    sync_dir_soon(parent(path))
}

/// Replaces `path` with `bytes` without any fsync: temp → write → rename. Readers still see
/// the old or the new file, never a half; only durability across a power cut is given up.
/// Used for state in `var/tmp/` (challenges, rate-limit windows), see ARCHITECTURE.md.
pub fn write_ephemeral(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = write_temp_with(path, bytes, false)?;
    fsio::persist(tmp, path).map_err(|e| Error::io("rename onto", path, e))
}

/// Creates `path` with `bytes`, failing if it already exists (spool entries must never
/// overwrite one another). Same durability steps as [`write`].
pub fn create_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = write_temp(path, bytes)?;
    fsio::persist_noclobber(tmp, path).map_err(|e| Error::io("link new file", path, e))?;
    sync_dir(parent(path))
}

/// Removes `path` durably; a file that is already gone counts as removed.
pub fn remove(path: &Path) -> Result<()> {
    match fsio::remove_file(path) {
        Ok(()) => sync_dir_soon(parent(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

/// Moves `from` to `to` (same file system) durably, fsyncing both folders.
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    fsio::rename(from, to).map_err(|e| Error::io("rename", from, e))?;
    sync_dir_soon(parent(to))?;
    if parent(from) != parent(to) {
        sync_dir_soon(parent(from))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("state.toml");
        write(&p, b"one").expect("write");
        write(&p, b"two").expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn create_new_never_overwrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("msg");
        create_new(&p, b"first").expect("create");
        assert!(create_new(&p, b"second").is_err());
        assert_eq!(std::fs::read(&p).expect("read"), b"first");
    }
}
