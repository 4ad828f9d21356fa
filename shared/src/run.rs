//! Process entry points shared by the executables: logging set-up, reading a CGI request
//! from the process, calling an endpoint and writing its answer. Kept here so each
//! executable is a few lines and behaves the same way.

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

/// An endpoint: request in, response out.
pub type Handler = fn(Request, &mut dyn Read) -> Response;

/// Serves one CGI request from the process environment and stdin. Returns the exit code.
pub fn cgi_main(program: &str, handler: Handler) -> i32 {
    init_logging(program);
    let req = Request::from_process_env();
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let resp = handler(req, &mut input);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // A client that went away closes the pipe; there is nobody left to tell, so that is
    // not an error worth a non-zero exit.
    match resp.write_to(&mut out) {
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
