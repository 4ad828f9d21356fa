//! The static (musl) build's memory allocator: mimalloc (its 2.x line, crate feature
//! `v2`) for a FastCGI responder, musl's own malloc for everything else (a CGI request, a
//! command line). Compiled into the musl target only (`shared/Cargo.toml` names mimalloc
//! under `cfg(target_env = "musl")`); the glibc build keeps glibc's malloc.
//!
//! Why: musl's malloc is small and frugal, which suits a process that answers one request
//! and exits, but in a long-lived threaded responder it cost more than the work. Through
//! nginx (scripts/bench.py, nginx section) the musl responder served 0.43-0.51x the
//! CAPTCHA GETs and 0.35-0.47x the token verifications of the glibc one, barely more than
//! the same build as CGI (1.06-1.18x), with 272 futex, 14.5 mmap and 14.2 munmap calls per
//! CAPTCHA GET (glibc: 11.3, 0.0, 0.0). With mimalloc the same responder makes 9.2 futex
//! and 0.1 mmap calls per request and serves 0.75-1.00x glibc (the rest is opt-level "s"
//! of the release archive: the same build at opt-level 3 served 1.01-1.31x).
//!
//! But mimalloc in a one-request process costs: with its transparent-huge-page advice a
//! CGI process grew from 1.9 to 8 MiB (so feature `no_thp`), and its start-up, which runs
//! in every process that links it, adds 0.05-0.1 ms of CPU and ~0.1 MiB (the 3.x line:
//! 0.25 ms). So the allocator follows the mode: fd 0 a listening socket (spawn-fcgi,
//! mod_fcgid; `fastcgi::stdin_is_listener`) means a responder and mimalloc; anything else
//! stays on musl's malloc, whose peak is the smallest. All candidate figures, with binary
//! sizes: docs/PERFORMANCE.md ("The static build's allocator").
//!
//! It never changes its choice: the mode is read once, at the process's first allocation
//! (before `main`, while only one thread exists), and every later allocation, reallocation
//! and free goes to that same allocator, so no block ever reaches the other one's `free`.
//! The choice only affects speed and memory, never behaviour: both allocators are complete.
//! It must never allocate, log or panic itself (it runs inside every allocation): the mode
//! test is one `getsockopt` on a stack variable.
#![cfg(target_env = "musl")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

/// Not decided yet (before the first allocation).
const UNDECIDED: u8 = 0;
/// musl's malloc (`System`): a CGI request or a command line.
const MUSL: u8 = 1;
/// mimalloc: a FastCGI responder.
const MIMALLOC: u8 = 2;

/// The allocator of every allocation in the static executables.
#[global_allocator]
static GLOBAL: ByMode = ByMode;

/// Which allocator this process uses; written once.
static CHOICE: AtomicU8 = AtomicU8::new(UNDECIDED);

struct ByMode;

impl ByMode {
    #[inline]
    fn choice() -> u8 {
        match CHOICE.load(Ordering::Relaxed) {
            UNDECIDED => decide(),
            c => c,
        }
    }
}

/// Reads the mode once. Should two threads race here (there is one thread when std makes
/// its first allocation), the first stored answer wins for both.
#[cold]
fn decide() -> u8 {
    let c = if stdin_is_listener() { MIMALLOC } else { MUSL };
    match CHOICE.compare_exchange(UNDECIDED, c, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => c,
        Err(earlier) => earlier,
    }
}

/// True when fd 0 is a listening socket: the test of `fastcgi::stdin_is_listener` (Linux
/// has `SO_ACCEPTCONN`), repeated here because this one must never allocate.
fn stdin_is_listener() -> bool {
    let mut accepting: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `accepting`, a live local of exactly
    // that size. A descriptor that is closed or is not a socket only makes it fail.
    let rc = unsafe {
        libc::getsockopt(
            0,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&raw mut accepting).cast(),
            &mut len,
        )
    };
    rc == 0 && accepting != 0
}

// SAFETY: every call goes to the one allocator chosen for the process, which never changes
// after the first allocation, so each block is freed or resized by the allocator that made
// it; both forward the caller's layout unchanged and uphold GlobalAlloc's contract.
unsafe impl GlobalAlloc for ByMode {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe {
            if Self::choice() == MIMALLOC {
                mimalloc::MiMalloc.alloc(layout)
            } else {
                System.alloc(layout)
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc_zeroed`, passed on.
        unsafe {
            if Self::choice() == MIMALLOC {
                mimalloc::MiMalloc.alloc_zeroed(layout)
            } else {
                System.alloc_zeroed(layout)
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator's `alloc`, hence from the chosen one.
        unsafe {
            if Self::choice() == MIMALLOC {
                mimalloc::MiMalloc.dealloc(ptr, layout)
            } else {
                System.dealloc(ptr, layout)
            }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from the chosen allocator; the caller's contract, passed on.
        unsafe {
            if Self::choice() == MIMALLOC {
                mimalloc::MiMalloc.realloc(ptr, layout, new_size)
            } else {
                System.realloc(ptr, layout, new_size)
            }
        }
    }
}
