//! The overall deadline of the request being served. Every request has one
//! (`request_timeout_seconds`, 30 s by default), so that no step can pin a CGI process or
//! a FastCGI thread for ever: the bounded steps (lock waits, SMTP and sendmail) cut their
//! own timeouts to what is left of it, and a watchdog (`run` under CGI, `fastcgi` under
//! FastCGI) answers for a request that overran it anyway, blocked in a call that has no
//! timeout of its own (a hung network file system, a FIFO where a file belongs).
//!
//! The deadline belongs to the thread that serves the request. This module only keeps
//! time; it never answers, logs or touches state itself.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The deadline before the config is read (and when it cannot be).
pub const DEFAULT: Duration = Duration::from_secs(30);

/// How long past its deadline a request may take before its watchdog answers for it. The
/// bounded steps end at the deadline; the grace lets the answer they lead to be written.
pub const GRACE: Duration = Duration::from_secs(2);

/// The request served on this thread.
struct Current {
    start: Instant,
    deadline: Instant,
    saved: Arc<AtomicBool>,
}

thread_local! {
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// The configured limit, for watchdogs that live on another thread than the request.
static LIMIT_MS: AtomicU64 = AtomicU64::new(DEFAULT.as_millis() as u64);

/// Marks the start of a request on this thread; the deadline is the last configured limit
/// ([`DEFAULT`] at first) until the config sets it ([`set_limit`]). Dropping the guard
/// ends it.
pub fn begin() -> Guard {
    let start = Instant::now();
    let saved = Arc::new(AtomicBool::new(false));
    CURRENT.with(|c| {
        *c.borrow_mut() = Some(Current {
            start,
            deadline: start + limit(),
            saved: Arc::clone(&saved),
        });
    });
    Guard { start, saved }
}

/// The running request's deadline; dropping it ends the request's deadline.
#[derive(Debug)]
pub struct Guard {
    start: Instant,
    saved: Arc<AtomicBool>,
}

impl Guard {
    /// When the watchdog must answer for this request, as a value another thread can keep.
    pub fn overrun(&self) -> Overrun {
        Overrun { start: self.start }
    }

    /// The flag [`note_saved`] sets, for a watchdog on another thread.
    pub fn saved_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.saved)
    }
}

/// The moment a request overran: its start plus the configured limit plus [`GRACE`].
#[derive(Debug, Clone, Copy)]
pub struct Overrun {
    start: Instant,
}

impl Overrun {
    /// The moment, with the limit as configured now (a request's config may set it after
    /// the request began).
    pub fn at(&self) -> Instant {
        self.start + limit() + GRACE
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        CURRENT.with(|c| *c.borrow_mut() = None);
    }
}

/// Sets the limit from the config: the current request's deadline becomes its start plus
/// `limit`, and later requests (and the watchdogs) use it too.
pub fn set_limit(limit: Duration) {
    LIMIT_MS.store(limit.as_millis() as u64, Ordering::Relaxed);
    CURRENT.with(|c| {
        if let Some(cur) = c.borrow_mut().as_mut() {
            cur.deadline = cur.start + limit;
        }
    });
}

/// The configured limit.
pub fn limit() -> Duration {
    Duration::from_millis(LIMIT_MS.load(Ordering::Relaxed))
}

/// What is left of the current request's time; `None` outside a request (command line).
pub fn remaining() -> Option<Duration> {
    CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .map(|cur| cur.deadline.saturating_duration_since(Instant::now()))
    })
}

/// `timeout`, cut to what is left of the current request's time (at least 1 ms, so that
/// a socket timeout stays valid).
pub fn clamp(timeout: Duration) -> Duration {
    match remaining() {
        Some(left) => timeout.min(left).max(Duration::from_millis(1)),
        None => timeout,
    }
}

/// Records that the current request's message is saved in the spool, so that a watchdog
/// that has to answer for the request says "received" instead of "NOT received".
pub fn note_saved() {
    CURRENT.with(|c| {
        if let Some(cur) = c.borrow().as_ref() {
            cur.saved.store(true, Ordering::Relaxed);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_cut_to_the_request_and_left_alone_outside_one() {
        assert_eq!(clamp(Duration::from_secs(9)), Duration::from_secs(9));
        let g = begin();
        set_limit(Duration::from_millis(200));
        let c = clamp(Duration::from_secs(9));
        assert!(c <= Duration::from_millis(200), "{c:?}");
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(clamp(Duration::from_secs(9)), Duration::from_millis(1));
        drop(g);
        assert_eq!(remaining(), None);
        set_limit(DEFAULT);
    }
}
