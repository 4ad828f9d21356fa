//! The lock runner: the one place in formwarden that takes file locks (the seed's
//! `LockRunner`). Every state change runs inside [`LockRunner::run`] under a key such as
//! `ratelimit_{key}`, `captcha_{id}` or `token_{profile}`; the key is normalized to a safe
//! alphabet and bounded length before it names a file in `var/lock/`. Waiting is bounded
//! (300 ms by default) and a timeout is an error that names the key, never a hang.
//!
//! This module must never unlink a lock file that another process could still be waiting
//! on, except through [`LockGuard::release_and_unlink`], which is safe because every
//! acquirer checks after locking that the path still names the inode it locked.
//!
//! We use std's `File::lock`/`try_lock` (stable since Rust 1.89) instead of `fs2`: both
//! end in the same `flock(2)` call, but `fs2`'s trait methods are shadowed by std's inherent
//! ones of the same name, so a `fs2` import would silently call std anyway (see
//! ARCHITECTURE.md).

//!
//! Opening, looking up and unlinking lock files go through the filesystem seam (`fsio`);
//! the flock calls stay here, because how to wait is this module's policy, but each
//! attempt first passes the seam's [`crate::fsio::checkpoint`], so a test build counts,
//! fails and crashes it like any other step.

#![allow(
    clippy::disallowed_methods,
    reason = "this is the lock runner, the one place that takes and releases flock locks"
)]

use crate::error::{Error, Result};
use crate::fsio;
use sha2::{Digest, Sha256};
use std::fs::{File, TryLockError};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Longest normalized key; longer keys are cut and get a hash suffix so that they stay
/// distinct.
pub const MAX_KEY_LEN: usize = 96;

/// A lock key after normalization: only `[a-z0-9_-]`, at most [`MAX_KEY_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockKey(String);

impl LockKey {
    /// Normalizes `raw` into a key that is safe as a file name. Characters outside the
    /// alphabet become `_`; overlong keys are cut and suffixed with a hash of the whole raw
    /// key, so two long keys that share a prefix do not collapse into one lock.
    pub fn new(raw: &str) -> LockKey {
        let mut s: String = raw
            .chars()
            .map(|c| match c {
                'a'..='z' | '0'..='9' | '_' | '-' => c,
                'A'..='Z' => c.to_ascii_lowercase(),
                _ => '_',
            })
            .collect();
        if s.is_empty() {
            s.push('_');
        }
        if s.len() > MAX_KEY_LEN {
            let digest = Sha256::digest(raw.as_bytes());
            let suffix = crate::random::hex(&digest[..8]);
            s.truncate(MAX_KEY_LEN - suffix.len() - 1);
            s.push('-');
            s.push_str(&suffix);
        }
        LockKey(s)
    }

    /// The rate limiter's key for one hashed client.
    pub fn ratelimit(client_key: &str) -> LockKey {
        LockKey::new(&format!("ratelimit_{client_key}"))
    }
    /// The CAPTCHA service's key for one challenge.
    pub fn captcha(challenge_id: &str) -> LockKey {
        LockKey::new(&format!("captcha_{challenge_id}"))
    }
    /// The token service's write key for one profile.
    pub fn token(profile: &str) -> LockKey {
        LockKey::new(&format!("token_{profile}"))
    }
    /// The spool's key for one message (claimed before sending).
    pub fn spool(message_id: &str) -> LockKey {
        LockKey::new(&format!("spool_{message_id}"))
    }
    /// The key that keeps sweeps from running twice at once.
    pub fn sweep() -> LockKey {
        LockKey::new("sweep")
    }

    /// The normalized key text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Takes and releases locks under one lock directory with one wait policy.
#[derive(Debug, Clone)]
pub struct LockRunner {
    dir: PathBuf,
    wait: Duration,
    poll: Duration,
}

/// A held lock. Dropping it releases the lock (closing the file releases the `flock`); the
/// file stays, so later acquirers contend on the same inode.
#[derive(Debug)]
pub struct LockGuard {
    /// Held only to keep the lock: closing it releases the `flock`.
    #[allow(dead_code)]
    file: File,
    path: PathBuf,
    key: LockKey,
    since: Instant,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        tracing::debug!(
            key = self.key.as_str(),
            held_us = self.since.elapsed().as_micros() as u64,
            "lock released"
        );
    }
}

impl LockGuard {
    /// The key this guard holds.
    pub fn key(&self) -> &LockKey {
        &self.key
    }

    /// Unlinks the lock file while still holding it, then releases it. Only sweeps use this,
    /// for keys whose state is gone (an expired challenge, a stale rate-limit window), so
    /// that `var/lock/` does not grow forever. It is safe because an acquirer that locked
    /// the now-unlinked inode notices the mismatch and retries on a fresh file.
    pub fn release_and_unlink(self) -> Result<()> {
        let path = self.path.clone();
        let r = fsio::remove_file(&path);
        drop(self);
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("unlink lock", &path, e)),
        }
    }
}

/// How one attempt to lock an open file ended.
enum Attempt {
    Locked,
    TimedOut,
}

impl LockRunner {
    /// A runner over `dir` that waits at most `wait`, sleeping at most `poll` between
    /// attempts when it has to poll.
    pub fn new(dir: impl Into<PathBuf>, wait: Duration, poll: Duration) -> Self {
        LockRunner {
            dir: dir.into(),
            wait,
            poll: poll.max(Duration::from_millis(1)),
        }
    }

    /// The configured wait bound.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// The lock file that belongs to `key` (in its shard's sub-folder, see `shard`).
    pub fn path_of(&self, key: &LockKey) -> PathBuf {
        crate::shard::path(&self.dir, key.as_str(), ".lock")
    }

    /// The lock folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `f` while holding `key`. This is how every state change in formwarden runs.
    /// Folder fsyncs of the writes inside `f` run right after the release and before this
    /// returns, so a caller that sees `Ok` knows its change is durable.
    pub fn run<T>(&self, key: &LockKey, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let guard = self.acquire(key)?;
        let (out, dirs) = crate::atomic::deferring_dir_syncs(f);
        drop(guard);
        let synced = crate::atomic::sync_dirs(&dirs);
        let out = out?;
        synced?;
        Ok(out)
    }

    /// Takes `key`, waiting at most the configured bound (and never past the request's
    /// deadline).
    pub fn acquire(&self, key: &LockKey) -> Result<LockGuard> {
        let deadline = Instant::now() + crate::deadline::clamp(self.wait);
        self.acquire_until(key, Some(deadline))
    }

    /// Takes `key` only if it is free right now (sweeps and the mail retry skip busy keys
    /// instead of waiting).
    pub fn try_acquire(&self, key: &LockKey) -> Result<Option<LockGuard>> {
        match self.acquire_until(key, None) {
            Ok(g) => Ok(Some(g)),
            Err(Error::LockTimeout { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes a key whose state is gone for good: takes `key` only if it is free right
    /// now, asks `gone` (under the lock, so it may remove the state itself) whether the key
    /// has no state left, and if so unlinks the lock file while still holding it (see
    /// [`LockGuard::release_and_unlink`]). Returns whether the key went; a busy key stays.
    pub fn remove_if(&self, key: &LockKey, gone: impl FnOnce() -> Result<bool>) -> Result<bool> {
        let Some(guard) = self.try_acquire(key)? else {
            return Ok(false);
        };
        if gone()? {
            guard.release_and_unlink()?;
            return Ok(true);
        }
        Ok(false)
    }

    fn acquire_until(&self, key: &LockKey, deadline: Option<Instant>) -> Result<LockGuard> {
        let path = self.path_of(key);
        let started = Instant::now();
        loop {
            let open = || fsio::open_lock_file(&path);
            let file = match open() {
                // The shard's sub-folder is made on first use.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if let Some(dir) = path.parent() {
                        crate::atomic::create_dir(dir)?;
                    }
                    open()
                }
                other => other,
            }
            .map_err(|e| Error::io("open lock", &path, e))?;
            fsio::checkpoint("flock", &path).map_err(|e| Error::io("flock", &path, e))?;
            let attempt = match deadline {
                None => match file.try_lock() {
                    Ok(()) => Attempt::Locked,
                    Err(TryLockError::WouldBlock) => Attempt::TimedOut,
                    Err(TryLockError::Error(e)) => return Err(Error::io("flock", &path, e)),
                },
                Some(d) => {
                    lock_until(&file, d, self.poll).map_err(|e| Error::io("flock", &path, e))?
                }
            };
            match attempt {
                Attempt::TimedOut => {
                    return Err(Error::LockTimeout {
                        key: key.as_str().to_string(),
                        waited_ms: self.wait.as_millis() as u64,
                    });
                }
                Attempt::Locked => {
                    // A sweep may have unlinked the file between our open and our lock; then
                    // we hold a lock nobody else will ever see, so we start over.
                    if same_inode(&file, &path) {
                        tracing::debug!(
                            key = key.as_str(),
                            waited_us = started.elapsed().as_micros() as u64,
                            "lock acquired"
                        );
                        return Ok(LockGuard {
                            file,
                            path,
                            key: key.clone(),
                            since: Instant::now(),
                        });
                    }
                }
            }
        }
    }
}

fn same_inode(file: &File, path: &Path) -> bool {
    match (fsio::file_metadata(file, path), fsio::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The most helper threads blocked in `flock(2)` at once in this process. A helper whose
/// requester timed out stays blocked until the holder releases; with a holder that never
/// does, a long-lived FastCGI responder would otherwise gain a thread per timed-out
/// request. Above the cap, waits fall back to polling.
pub const MAX_HELPERS: usize = 16;

/// Helper threads alive now.
static HELPERS: AtomicUsize = AtomicUsize::new(0);

/// How many helper threads are blocked in `flock(2)` right now (for tests and logs).
pub fn helpers_alive() -> usize {
    HELPERS.load(Ordering::SeqCst)
}

/// The waiter thread's view of a contended acquisition.
enum WaitState {
    Waiting,
    Acquired,
    Failed(std::io::Error),
    Abandoned,
}

/// Locks `file` before `deadline` or reports a timeout.
///
/// Fixed-period polling is unfair: a waiter sleeps through the moment the lock comes free
/// while a newcomer takes it, and under bursts waiters time out although the lock was free
/// most of the time. So a contended wait blocks in `flock(2)`, where the kernel hands the
/// lock over the moment the holder releases: on this thread, cut off at the deadline by a
/// timer signal ([`timed_block`]). Without a timer it blocks on a helper thread while this
/// thread waits on a condition variable with the deadline; on timeout the helper gives the
/// lock back as soon as it gets it. Only if no thread can be started (or too many helpers
/// already wait) do we fall back to polling with short, growing sleeps capped at `poll`.
fn lock_until(file: &File, deadline: Instant, poll: Duration) -> std::io::Result<Attempt> {
    match file.try_lock() {
        Ok(()) => return Ok(Attempt::Locked),
        Err(TryLockError::WouldBlock) => {}
        Err(TryLockError::Error(e)) => return Err(e),
    }
    if let Some(attempt) = timed_block(file, deadline) {
        return attempt;
    }
    lock_on_helper(file, deadline, poll)
}

/// The real-time signal that cuts a blocking `flock(2)` short at its deadline. Its handler
/// does nothing; what matters is that it is installed without `SA_RESTART`, so the
/// blocked call returns `EINTR`.
fn wake_signal() -> libc::c_int {
    libc::SIGRTMIN() + 7
}

/// Installs the no-op handler of [`wake_signal`] once per process; false if that failed.
fn wake_handler_installed() -> bool {
    static INSTALLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *INSTALLED.get_or_init(|| {
        extern "C" fn wake(_: libc::c_int) {}
        // SAFETY: a zeroed sigaction is valid; the handler is async-signal-safe (empty).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = wake as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = 0;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(wake_signal(), &sa, std::ptr::null_mut()) == 0
        }
    })
}

/// Blocks in `flock(2)` on this very thread, cut short at `deadline` by a one-shot timer
/// that signals this thread only (`SIGEV_THREAD_ID`). The kernel hands a released lock to
/// the next blocked waiter directly, and the waiter that gets it runs on at once: no helper
/// thread has to be scheduled first and then wake the requester, a hop that under CPU
/// pressure costs a scheduling round each time the lock changes hands. `None` when the
/// timer cannot be set up (then the helper thread does the wait).
fn timed_block(file: &File, deadline: Instant) -> Option<std::io::Result<Attempt>> {
    use std::os::fd::AsRawFd;
    if !wake_handler_installed() {
        return None;
    }
    // SAFETY: plain system calls on values we own; the timer is deleted before returning.
    unsafe {
        let mut ev: libc::sigevent = std::mem::zeroed();
        ev.sigev_notify = libc::SIGEV_THREAD_ID;
        ev.sigev_signo = wake_signal();
        ev.sigev_notify_thread_id = libc::syscall(libc::SYS_gettid) as libc::c_int;
        let mut timer: libc::timer_t = std::mem::zeroed();
        if libc::timer_create(libc::CLOCK_MONOTONIC, &mut ev, &mut timer) != 0 {
            return None;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        // It repeats every 5 ms after the deadline: should the first signal land just
        // before flock(2) starts blocking, the next one still ends the wait.
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 5_000_000,
            },
            it_value: libc::timespec {
                tv_sec: left.as_secs() as _,
                // At least 1 ns: an all-zero value would disarm instead of arm.
                tv_nsec: libc::c_long::from(left.subsec_nanos().max(1)),
            },
        };
        if libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) != 0 {
            libc::timer_delete(timer);
            return None;
        }
        let fd = file.as_raw_fd();
        let outcome = loop {
            if libc::flock(fd, libc::LOCK_EX) == 0 {
                break Ok(Attempt::Locked);
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                break Err(e);
            }
            // Our timer, or another signal before the deadline: then block again.
            if Instant::now() >= deadline {
                break Ok(Attempt::TimedOut);
            }
        };
        libc::timer_delete(timer);
        Some(outcome)
    }
}

/// The wait on a helper thread, for when no timer can be had (see [`lock_until`]).
fn lock_on_helper(file: &File, deadline: Instant, poll: Duration) -> std::io::Result<Attempt> {
    if HELPERS.fetch_add(1, Ordering::SeqCst) >= MAX_HELPERS {
        HELPERS.fetch_sub(1, Ordering::SeqCst);
        return poll_until(file, deadline, poll);
    }
    // The clone shares the open file description, and flock locks belong to the open file
    // description: a lock taken through the clone is held by `file` too.
    let waiter = match file.try_clone() {
        Ok(w) => w,
        Err(e) => {
            HELPERS.fetch_sub(1, Ordering::SeqCst);
            return Err(e);
        }
    };
    let shared = Arc::new((Mutex::new(WaitState::Waiting), Condvar::new()));
    let theirs = Arc::clone(&shared);
    let spawned = thread::Builder::new()
        .name("flock-wait".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let result = waiter.lock();
            let (m, cv) = &*theirs;
            let mut st = m.lock().unwrap_or_else(|p| p.into_inner());
            match (&*st, result) {
                (WaitState::Abandoned, Ok(())) => {
                    // The requester gave up: hand the lock straight back.
                    let _ = waiter.unlock();
                }
                (WaitState::Abandoned, Err(_)) => {}
                (_, Ok(())) => *st = WaitState::Acquired,
                (_, Err(e)) => *st = WaitState::Failed(e),
            }
            HELPERS.fetch_sub(1, Ordering::SeqCst);
            cv.notify_all();
        });
    if spawned.is_err() {
        HELPERS.fetch_sub(1, Ordering::SeqCst);
        return poll_until(file, deadline, poll);
    }
    let (m, cv) = &*shared;
    let mut st = m.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        match std::mem::replace(&mut *st, WaitState::Waiting) {
            WaitState::Acquired => return Ok(Attempt::Locked),
            WaitState::Failed(e) => return Err(e),
            WaitState::Waiting | WaitState::Abandoned => {}
        }
        let now = Instant::now();
        if now >= deadline {
            *st = WaitState::Abandoned;
            return Ok(Attempt::TimedOut);
        }
        st = cv
            .wait_timeout(st, deadline - now)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// Polling fallback: sleeps 1, 2, 4 … ms (capped at `poll`) with a little jitter, so early
/// retries are quick and waiters do not retry in lockstep.
fn poll_until(file: &File, deadline: Instant, poll: Duration) -> std::io::Result<Attempt> {
    let mut step = Duration::from_millis(1);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Attempt::Locked),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => return Err(e),
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(Attempt::TimedOut);
        }
        let jitter = Duration::from_micros(u64::from(crate::random::small_u16()) % 500);
        thread::sleep((step + jitter).min(deadline - now));
        step = (step * 2).min(poll);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_normalized_and_bounded() {
        assert_eq!(LockKey::new("token_Deploy").as_str(), "token_deploy");
        assert_eq!(
            LockKey::new("captcha_../../etc/passwd").as_str(),
            "captcha_______etc_passwd"
        );
        assert_eq!(LockKey::new("").as_str(), "_");
        let long_a = LockKey::new(&format!("x{}", "a".repeat(500)));
        let long_b = LockKey::new(&format!("x{}b", "a".repeat(499)));
        assert!(long_a.as_str().len() <= MAX_KEY_LEN);
        assert_ne!(long_a, long_b);
        assert!(LockKey::new("ü/\0\n").as_str().chars().all(|c| c == '_'));
    }

    #[test]
    fn a_held_key_times_out_after_the_bound_and_names_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runner = LockRunner::new(
            dir.path(),
            Duration::from_millis(80),
            Duration::from_millis(25),
        );
        let key = LockKey::new("token_x");
        let held = runner.acquire(&key).expect("first acquire");
        let t = Instant::now();
        let err = runner.acquire(&key).expect_err("must time out");
        assert!(t.elapsed() >= Duration::from_millis(80));
        assert_eq!(err.to_string(), "Lock-Timeout nach 80ms: token_x");
        drop(held);
        assert!(runner.acquire(&key).is_ok());
    }

    /// Issue 7, item 5: with a holder that never releases, timed-out waits leave at most
    /// [`MAX_HELPERS`] helper threads behind; waits beyond that poll, and still time out
    /// with the contract's error. Once the holder lets go, every helper ends.
    #[test]
    fn helper_threads_are_capped_under_a_holder_that_never_releases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stuck.lock");
        // Another open file description: flock conflicts with it even in this process.
        let holder = File::create(&path).expect("lock file");
        holder.lock().expect("hold");
        let waiter = File::open(&path).expect("open");
        for _ in 0..(MAX_HELPERS * 3) {
            let deadline = Instant::now() + Duration::from_millis(5);
            let r = lock_on_helper(&waiter, deadline, Duration::from_millis(2));
            assert!(matches!(r, Ok(Attempt::TimedOut)));
            assert!(helpers_alive() <= MAX_HELPERS, "{}", helpers_alive());
        }
        assert!(helpers_alive() >= 1, "the waits used helpers");
        holder.unlock().expect("release");
        let t = Instant::now();
        while helpers_alive() > 0 && t.elapsed() < Duration::from_secs(10) {
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(helpers_alive(), 0, "every helper ended after the release");
    }

    /// The wait on this thread (timer-cut `flock`): times out at its bound with a holder
    /// that never releases, and gets the lock once the holder lets go, leaving no thread.
    #[test]
    fn a_timed_blocking_wait_ends_at_its_deadline_and_takes_a_released_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("held.lock");
        let holder = File::create(&path).expect("lock file");
        holder.lock().expect("hold");
        let waiter = File::open(&path).expect("open");
        for ms in [0, 1, 30] {
            let t = Instant::now();
            let r = timed_block(&waiter, t + Duration::from_millis(ms)).expect("a timer");
            assert!(matches!(r, Ok(Attempt::TimedOut)));
            assert!(t.elapsed() >= Duration::from_millis(ms));
        }
        let h = thread::spawn(move || {
            thread::sleep(Duration::from_millis(30));
            holder.unlock().expect("release");
        });
        let r = timed_block(&waiter, Instant::now() + Duration::from_secs(5)).expect("a timer");
        assert!(matches!(r, Ok(Attempt::Locked)));
        h.join().expect("join");
    }

    #[test]
    fn a_waiter_gets_the_lock_once_it_is_released_and_not_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runner = LockRunner::new(
            dir.path(),
            Duration::from_millis(2000),
            Duration::from_millis(25),
        );
        let key = LockKey::new("k");
        let held = runner.acquire(&key).expect("acquire");
        let released = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (r2, k2, seen) = (runner.clone(), key.clone(), released.clone());
        // The waiter records whether the holder had already let go when it got the lock:
        // getting it while held would be a broken lock, and not getting it at all within
        // the 2-second bound would be a lost wake-up.
        let t = thread::spawn(move || {
            r2.acquire(&k2)
                .map(|_| seen.load(std::sync::atomic::Ordering::SeqCst))
        });
        thread::sleep(Duration::from_millis(50));
        released.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(held);
        let got = t.join().expect("join").expect("the waiter gets the lock");
        assert!(got, "the waiter got the lock while it was still held");
    }

    #[test]
    fn an_unlinked_lock_file_is_not_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runner = LockRunner::new(
            dir.path(),
            Duration::from_millis(500),
            Duration::from_millis(25),
        );
        let key = LockKey::new("captcha_abc");
        let held = runner.acquire(&key).expect("acquire");
        let r2 = runner.clone();
        let k2 = key.clone();
        let waiter =
            thread::spawn(move || r2.acquire(&k2).map(|g| g.file.metadata().map(|m| m.ino())));
        thread::sleep(Duration::from_millis(30));
        held.release_and_unlink().expect("unlink");
        let ino = waiter
            .join()
            .expect("join")
            .expect("acquired")
            .expect("meta");
        let on_disk = std::fs::metadata(runner.path_of(&key))
            .expect("recreated")
            .ino();
        assert_eq!(
            ino, on_disk,
            "the waiter must hold the lock file that is on disk now"
        );
    }
}
