//! Process entry points shared by the executables: logging set-up, then either one CGI
//! request from the process (environment, stdin, stdout) or, when a FastCGI process manager
//! started us with a listening socket on fd 0, a FastCGI responder that serves requests in
//! a loop. Both call the same endpoint function. Kept here so each executable is a few
//! lines and behaves the same way under every web server.

use crate::cgi::{Request, Response};
use std::io::{Read, Write};

/// Name of the variable that sets the log level (`error`, `warn`, `info`, `debug`, `trace`).
pub const LOG_ENV: &str = "FORMWARDEN_LOG";

/// Sends log lines to stderr (the web server's error log under CGI), without colours.
pub fn init_logging(program: &str) {
    let level = std::env::var(LOG_ENV)
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
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

/// An endpoint: request in, response out.
pub type Handler = fn(Request, &mut dyn Read) -> Response;

/// Serves one CGI request from the process environment and stdin, or FastCGI requests
/// until the listening socket goes away when fd 0 is a listening socket. Returns the exit
/// code.
pub fn cgi_main(program: &str, handler: Handler) -> i32 {
    init_logging(program);
    if crate::fastcgi::stdin_is_listener() {
        // Under FastCGI every request brings its own variables; the process environment
        // is never read for a request.
        return match crate::fastcgi::serve_stdin(handler, &crate::fastcgi::Limits::default()) {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(program, error = %e, "FastCGI responder stopped");
                1
            }
        };
    }
    let req = Request::from_process_env();
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
