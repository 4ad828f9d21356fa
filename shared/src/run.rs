//! Process entry points shared by the executables: logging set-up, then either one CGI
//! request from the process (environment, stdin, stdout) or, when a FastCGI process manager
//! started us with a listening socket on fd 0, a FastCGI responder that serves requests in
//! a loop. Both call the same endpoint function. Kept here so each executable is a few
//! lines and behaves the same way under every web server. It never reads or writes state
//! itself; what a request gets is the endpoint's decision.

use crate::cgi::Request;
use crate::handler::Handler;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Name of the variable that sets the log level (`error`, `warn`, `info`, `debug`, `trace`).
pub const LOG_ENV: &str = "FORMWARDEN_LOG";

/// Sends log lines to stderr (the web server's error log under CGI), without colours.
pub fn init_logging(program: &str) {
    let level = std::env::var(LOG_ENV)
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        // Warnings and errors only by default: under CGI every line lands in the host's
        // error log (Apache prefixes each with "AH01215: stderr from …"), and cron mails
        // whatever a command prints. FORMWARDEN_LOG=info or debug shows more.
        .unwrap_or(tracing::Level::WARN);
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_max_level(level)
        .try_init();
    tracing::trace!(program, "started");
}

/// The most of an unread request body drained after the answer (see `cgi_main`).
const DRAIN_LIMIT: u64 = 1024 * 1024;

/// A reader that counts the bytes it passed on.
struct Counting<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Starts the watchdog of a CGI process: if the request is still running when it overran
/// its deadline by the grace period, the watchdog writes [`overrun_response`] and ends the
/// process. State stays consistent (every write is temp file + rename, a held lock dies
/// with the process) and a saved message stays in the spool for the retry.
fn cgi_watchdog(deadline: &crate::deadline::Guard, answered: Arc<AtomicBool>) {
    let saved = deadline.saved_flag();
    let overrun = deadline.overrun();
    let spawned = std::thread::Builder::new()
        .name("watchdog".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            loop {
                // Read every time: the config sets the limit after the watchdog started.
                let due = overrun.at();
                let now = Instant::now();
                if now < due {
                    std::thread::sleep((due - now).min(std::time::Duration::from_secs(1)));
                    continue;
                }
                if answered.swap(true, Ordering::SeqCst) {
                    return;
                }
                let saved = saved.load(Ordering::Relaxed);
                tracing::error!(
                    limit_s = crate::deadline::limit().as_secs(),
                    saved,
                    "the request overran its deadline; answered for it and ended the process"
                );
                let _ = crate::handler::overrun_response(saved).write_to(&mut std::io::stdout());
                // SAFETY: _exit(2) ends the process without running destructors, which the
                // stuck main thread may be in the middle of; nothing is left to flush.
                unsafe { libc::_exit(0) }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no watchdog for this request");
    }
}

/// Points stdout and stderr at /dev/null: the web server then sees the end of our output
/// (Apache and fcgiwrap wait for both to close before they finish the response).
fn close_output() {
    let _ = std::io::stdout().flush();
    if let Ok(null) = crate::fsio::open_existing_for_write(Path::new("/dev/null")) {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2(2) onto our own standard descriptors.
        unsafe {
            libc::dup2(null.as_raw_fd(), 1);
            libc::dup2(null.as_raw_fd(), 2);
        }
    }
}

/// True in a process that serves exactly one request (CGI), false under FastCGI.
static ONE_REQUEST: AtomicBool = AtomicBool::new(false);

/// Called by an endpoint once its request takes no lock that another request may wait on
/// any more (what is left is rendering an image or a page): a CGI process then lowers its
/// own CPU priority, so that under a burst the processes that hold or want locks get the
/// CPU first and a lock holder is not pushed off the CPU by someone's PNG rendering. The
/// answer of this request is at most a little later. Under FastCGI it does nothing: the
/// priority of a worker thread could not be raised again for its next request.
pub fn done_with_locks() {
    if ONE_REQUEST.swap(false, Ordering::Relaxed) {
        // SAFETY: nice(2) changes only this process's scheduling priority.
        unsafe {
            libc::nice(10);
        }
    }
}

/// Serves one CGI request from the process environment and stdin, or FastCGI requests
/// until the listening socket goes away when fd 0 is a listening socket. Returns the exit
/// code.
pub fn cgi_main(program: &str, handler: Handler) -> i32 {
    init_logging(program);
    if let Some(code) = crate::check::from_args() {
        return code;
    }
    if crate::fastcgi::stdin_is_listener() {
        // Under FastCGI every request brings its own variables; the process environment
        // is never read for a request.
        return match crate::fastcgi::serve_stdin(
            handler,
            &crate::fastcgi::ResponderLimits::default(),
        ) {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(program, error = %e, "FastCGI responder stopped");
                1
            }
        };
    }
    let req = Request::from_process_env();
    ONE_REQUEST.store(true, Ordering::Relaxed);
    let deadline = crate::deadline::begin();
    let answered = Arc::new(AtomicBool::new(false));
    cgi_watchdog(&deadline, Arc::clone(&answered));
    let stdin = std::io::stdin();
    let mut input = Counting {
        inner: stdin.lock(),
        read: 0,
    };
    let announced = req
        .var("CONTENT_LENGTH")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let resp = handler(req, &mut input);
    if answered.swap(true, Ordering::SeqCst) {
        // The watchdog is answering for this request and ends the process.
        loop {
            std::thread::park();
        }
    }
    drop(deadline);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let written = resp.write_to(&mut out);
    // An answer given without reading the body (405, 413, 415) must still let the web
    // server finish sending it: Apache's CGI module resets the connection, cutting our
    // answer short, when the script exits with the body unread. The rest is read and
    // dropped, bounded so that a huge upload cannot keep the process busy.
    // Only what the handler left unread is drained: a server that keeps stdin open after
    // the body must not make us wait for an end that never comes.
    let unread = announced.saturating_sub(input.read).min(DRAIN_LIMIT);
    let _ = std::io::copy(&mut input.by_ref().take(unread), &mut std::io::sink());
    if written.is_ok() && crate::handler::has_after_answer() {
        drop(out);
        close_output();
        crate::handler::run_after_answer();
    }
    // A client that went away closes the pipe; there is nobody left to tell, so that is
    // not an error worth a non-zero exit.
    match written {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "{program}: cannot write the response: {e}"
            );
            1
        }
    }
}
