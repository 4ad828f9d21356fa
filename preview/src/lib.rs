//! The local development preview: a tiny HTTP/1.1 server on a loopback address that serves
//! the example static contact page from `deploy/site/` and runs the real `captcha`, `contact`
//! and `tokens` executables as CGI processes, one process per request, the way Apache's
//! `mod_cgi` does (RFC 3875). It exists so that README command #1 works without root and
//! without an installed web server, and so that what a developer clicks through is exactly
//! what the executables do under a real server. It is its own crate, linked only by the
//! `preview` executable, so that no product executable carries an HTTP server.
//!
//! This file owns the connection loop: the bounded connection slots, one request per
//! connection, routing to a static file or a CGI program, and closing without losing the
//! answer. [`request`] reads and parses what the client sent (the head through `httparse`),
//! [`files`] maps a URL to a file of the site, [`gateway`] runs the CGI programs and
//! [`reply`] frames the answer.
//!
//! It is a development preview, not a production server: it answers one request per
//! connection, holds whole bodies in memory, binds whatever address its caller chooses (the
//! `preview` executable only ever chooses loopback) and knows nothing about TLS. It must never
//! open anything under `var/` itself (the executables own all state, and their locking and
//! atomic-write guarantees only hold if nothing else touches those files), never serve a file
//! from outside the site directory, never pass its own environment to a CGI process beyond
//! `PATH`, and never write a client address to its log (the project's privacy rule).

mod files;
mod gateway;
mod reply;
mod request;

/// For the fuzzer (fuzz/): the request head at the start of `buf` as the preview parses it
/// (`Ok(None)` while incomplete, the status it would answer otherwise), with the offset just
/// past its blank line; on a parsed head, the route and `PATH_INFO` decoding run too.
#[doc(hidden)]
pub fn fuzz_head(buf: &[u8]) -> Result<Option<FuzzedHead>, u16> {
    let _ = request::log_label(buf);
    let Some((head, end)) = request::parse_head(buf)? else {
        return Ok(None);
    };
    let route = cgi_route(head.path()).map(|(name, info)| (name, info.map(decode_path_info)));
    let _ = head.query();
    Ok(Some(FuzzedHead {
        end,
        target: head.target.clone(),
        version: head.version,
        host_fields: head
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("host"))
            .count(),
        content_length: head.content_length,
        routed: route.is_some(),
    }))
}

/// What [`fuzz_head`] found in a complete head.
#[doc(hidden)]
#[derive(Debug)]
pub struct FuzzedHead {
    /// The offset just past the head's blank line.
    pub end: usize,
    /// The request-target as sent.
    pub target: String,
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub version: &'static str,
    /// How many `Host` fields it has.
    pub host_fields: usize,
    /// The validated `Content-Length`.
    pub content_length: Option<u64>,
    /// True when the path names one of the CGI programs.
    pub routed: bool,
}

/// The preview's bounds, for the fuzzer's checks.
#[doc(hidden)]
pub const FUZZ_LIMITS: (usize, u64) = (MAX_HEAD, MAX_BODY);

use gateway::{CgiRequest, cgi_route, decode_path_info, run_cgi};
use reply::Reply;
use request::{NoRequest, RequestHead, read_body, read_request, read_until};
use std::ffi::OsString;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// The executables reachable under `/cgi-bin/`; any other name is a 404, so a request can
/// never make the preview run an arbitrary file that happens to sit next to it.
pub const CGI_NAMES: [&str; 3] = ["captcha", "contact", "tokens"];

/// The value of `SERVER_SOFTWARE` and of the `Server` response header.
const SERVER_SOFTWARE: &str = "formwarden-preview";
/// A request line plus headers larger than this is refused with 431, so a client cannot make
/// a connection thread buffer without bound.
const MAX_HEAD: usize = 16 * 1024;
/// A request body larger than this is refused with 413 before any process is spawned; the
/// contact form is far smaller, and the executables enforce their own, tighter limits.
const MAX_BODY: u64 = 1024 * 1024;
/// The whole request (head and body) must arrive within this time, so a client that trickles
/// one byte at a time cannot hold a connection slot for long.
const READ_DEADLINE: Duration = Duration::from_secs(10);
/// A client that stops reading our answer is given up after this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many connections are served at once; one more is answered 503 at once, so a
/// flood of connections costs threads only up to this bound.
const MAX_CONNECTIONS: usize = 64;
/// A CGI process that has not finished within this time is killed and answered 504, like
/// Apache's `Timeout`; the executables normally finish in milliseconds.
const CGI_TIMEOUT: Duration = Duration::from_secs(30);
/// A CGI process that writes more than this is killed and answered 502.
const MAX_CGI_OUTPUT: u64 = 8 * 1024 * 1024;
/// A static file larger than this is not served; the example site is a few kilobytes.
const MAX_STATIC_FILE: u64 = 8 * 1024 * 1024;
/// After answering a request whose body was not read, unread input is drained for at most this
/// long before closing, so that closing does not reset the connection before the client has
/// read the answer.
const LINGER: Duration = Duration::from_secs(1);
/// At most this many unread bytes are drained before closing.
const MAX_DRAIN: usize = 2 * 1024 * 1024;
/// The `PATH` given to CGI processes when the preview itself has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Where the preview listens and what it serves.
#[derive(Debug, Clone)]
pub struct PreviewConfig {
    /// The address to listen on; callers should choose a loopback address.
    pub listen: SocketAddr,
    /// The static site (the example contact page); nothing outside it is ever served.
    pub site_dir: PathBuf,
    /// The directory holding the `captcha`, `contact` and `tokens` executables.
    pub cgi_dir: PathBuf,
    /// The runtime root handed to every CGI process as `FORMWARDEN_ROOT`.
    pub runtime_root: PathBuf,
}

impl PreviewConfig {
    /// Checks, before anything is created or bound, that the site directory exists and that
    /// every executable is in `cgi_dir`; the error is a message for the user saying what to
    /// do, because a preview started in the wrong place would otherwise only show 404s and
    /// 500s.
    ///
    /// # Errors
    ///
    /// The first thing that is missing.
    pub fn check(&self) -> Result<(), String> {
        if !self.site_dir.is_dir() {
            return Err(format!(
                "the site folder {} does not exist; run from the repository or pass --root DIR",
                self.site_dir.display()
            ));
        }
        match CGI_NAMES.iter().find(|n| !self.cgi_dir.join(n).is_file()) {
            Some(name) => Err(format!(
                "the executable `{name}` is missing in {}; build them first with `cargo build --release`",
                self.cgi_dir.display()
            )),
            None => Ok(()),
        }
    }
}

/// A bound preview server, ready to [`run`](Preview::run); binding first lets a caller (or a
/// test binding port 0) learn the address before serving.
#[derive(Debug)]
pub struct Preview {
    listener: TcpListener,
    site: Arc<ServedSite>,
}

/// What every connection thread needs, resolved once at bind time.
#[derive(Debug)]
struct ServedSite {
    /// Canonical, so that a resolved file can be checked to lie inside it by prefix.
    site_dir: PathBuf,
    /// Absolute, because CGI processes run with `cgi_dir` as their working directory.
    cgi_dir: PathBuf,
    /// Absolute for the same reason: a relative root would resolve against `cgi_dir`.
    runtime_root: PathBuf,
    /// The one variable of the preview's own environment that CGI processes inherit.
    path_env: OsString,
    /// Connections being served now, bounded by [`MAX_CONNECTIONS`].
    active: AtomicUsize,
}

/// Binds the listening socket and resolves the configured directories.
///
/// # Errors
///
/// A missing site directory, or a socket that cannot be bound; a port already in use comes
/// back with [`io::ErrorKind::AddrInUse`], so a caller can tell the user which port to change.
pub fn bind(cfg: PreviewConfig) -> io::Result<Preview> {
    let site_dir = cfg.site_dir.canonicalize().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("site directory {}: {e}", cfg.site_dir.display()),
        )
    })?;
    let cgi_dir = std::path::absolute(&cfg.cgi_dir)?;
    let runtime_root = std::path::absolute(&cfg.runtime_root)?;
    if !cfg.listen.ip().is_loopback() {
        // The preview is not hardened for a network; say so once rather than refuse, because
        // the address is the caller's decision.
        eprintln!(
            "preview: warning: listening on a non-loopback address; this server is for local development only"
        );
    }
    let listener = TcpListener::bind(cfg.listen)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: {e}", cfg.listen)))?;
    Ok(Preview {
        listener,
        site: Arc::new(ServedSite {
            site_dir,
            cgi_dir,
            runtime_root,
            path_env: std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
            active: AtomicUsize::new(0),
        }),
    })
}

/// Binds and serves forever.
///
/// # Errors
///
/// Returns only if [`bind`] fails.
pub fn serve(cfg: PreviewConfig) -> io::Result<()> {
    bind(cfg)?.run()
}

impl Preview {
    /// The address actually bound (useful after binding port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections forever, one thread per connection up to [`MAX_CONNECTIONS`].
    pub fn run(self) -> ! {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => self.dispatch(stream, peer),
                Err(e) => {
                    // Accept fails transiently (for example when out of file descriptors);
                    // pausing briefly keeps such a failure from spinning a core.
                    eprintln!("preview: accept failed: {e}");
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn dispatch(&self, stream: TcpStream, peer: SocketAddr) {
        let Some(slot) = ConnectionSlot::take(&self.site) else {
            refuse_busy(stream);
            return;
        };
        let site = Arc::clone(&self.site);
        let spawned = thread::Builder::new()
            .name("preview-conn".into())
            .spawn(move || {
                // The slot lives as long as the thread, so the count drops when it ends.
                let _slot = slot;
                handle_connection(&site, stream, peer);
            });
        if let Err(e) = spawned {
            // The closure (and with it the slot and the socket) is dropped, which frees the
            // slot and closes the connection.
            eprintln!("preview: cannot start a connection thread: {e}");
        }
    }
}

/// One of the [`MAX_CONNECTIONS`] connection slots; freed on drop.
struct ConnectionSlot(Arc<ServedSite>);

impl ConnectionSlot {
    fn take(site: &Arc<ServedSite>) -> Option<ConnectionSlot> {
        let before = site.active.fetch_add(1, Ordering::SeqCst);
        if before >= MAX_CONNECTIONS {
            site.active.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(ConnectionSlot(Arc::clone(site)))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answers a connection over the cap without reading it; the short timeout keeps the accept
/// loop from ever waiting on such a client.
fn refuse_busy(mut stream: TcpStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let mut response = Reply::error(503);
    response.headers.push(("Retry-After".into(), "1".into()));
    let _ = stream.write_all(&response.to_bytes(false));
    eprintln!("preview: - - 503 0ms (too many connections)");
}

fn handle_connection(site: &ServedSite, mut stream: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    let deadline = started + READ_DEADLINE;
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let _ = stream.set_nodelay(true);

    let (label, response, head_only, drain) = match read_request(&mut stream, deadline) {
        Err(NoRequest::Gone) => return,
        Err(NoRequest::Answer(status, label)) => (label, Reply::error(status), false, true),
        Ok((head, leftover)) => {
            let label = (head.method.clone(), head.path().to_string());
            let head_only = head.method == "HEAD";
            let (response, drain) = answer(site, &mut stream, &head, leftover, peer, deadline);
            (label, response, head_only, drain)
        }
    };
    let _ = stream.write_all(&response.to_bytes(head_only));
    let _ = stream.flush();
    // The log line names method, path and status only: never the client address.
    eprintln!(
        "preview: {} {} {} {}ms",
        label.0,
        label.1,
        response.status,
        started.elapsed().as_millis()
    );
    close(stream, drain);
}

/// Routes a parsed request; the flag says whether unread request bytes may remain.
fn answer(
    site: &ServedSite,
    stream: &mut TcpStream,
    head: &RequestHead,
    leftover: Vec<u8>,
    peer: SocketAddr,
    deadline: Instant,
) -> (Reply, bool) {
    if !head.target.starts_with('/') {
        // Absolute-form and asterisk-form targets are for proxies and OPTIONS *, neither of
        // which the preview is.
        return (Reply::error(400), true);
    }
    let path = head.path();
    if path == "/cgi-bin" || path.starts_with("/cgi-bin/") {
        let Some((name, path_info)) = cgi_route(path) else {
            return (Reply::error(404), true);
        };
        let path_info = match path_info.map(decode_path_info) {
            Some(None) => return (Reply::error(400), true),
            decoded => decoded.flatten(),
        };
        let body = match read_body(stream, head, leftover, deadline) {
            Ok(body) => body,
            Err(status) => return (Reply::error(status), true),
        };
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let request = CgiRequest {
            name,
            path_info: path_info.as_deref(),
            head,
            peer,
            local,
        };
        return (run_cgi(site, &request, body), false);
    }
    // The static route never needs a body, so one that was sent is left unread and drained.
    let drain = head.content_length.is_some_and(|n| n > 0);
    if head.method != "GET" && head.method != "HEAD" {
        let mut response = Reply::error(405);
        response.headers.push(("Allow".into(), "GET, HEAD".into()));
        return (response, drain);
    }
    (files::serve_static(&site.site_dir, path), drain)
}

/// Closes the connection; when request bytes may still be unread, drains them briefly first,
/// because closing a socket with unread input resets it and the client may lose our answer.
fn close(mut stream: TcpStream, drain: bool) {
    let _ = stream.shutdown(Shutdown::Write);
    if !drain {
        return;
    }
    let until = Instant::now() + LINGER;
    let mut sink = [0u8; 8192];
    let mut drained = 0usize;
    while drained < MAX_DRAIN {
        match read_until(&mut stream, &mut sink, until) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    /// Sends raw bytes to the server and returns everything it answered.
    fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.write_all(request).unwrap();
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn the_server_serves_files_and_runs_cgi_programs() {
        // End to end over a real socket, with shell scripts standing in for the executables.
        let tmp = tempfile::tempdir().unwrap();
        let site = tmp.path().join("site");
        let cgi = tmp.path().join("cgi");
        fs::create_dir_all(&site).unwrap();
        fs::create_dir_all(&cgi).unwrap();
        fs::write(site.join("index.html"), "<p>form</p>").unwrap();
        fs::write(tmp.path().join("secret.txt"), "secret").unwrap();
        let scripts = [
            // Prints its environment, so the test can see exactly what it was given.
            (
                "captcha",
                "#!/bin/sh\nprintf 'Status: 200 OK\\nContent-Type: text/plain\\n\\n'\necho \"hello $REQUEST_METHOD\"\nenv\necho 'a log line' >&2\n",
            ),
            // Echoes its body back, proving the body reaches stdin.
            (
                "contact",
                "#!/bin/sh\nprintf 'Status: 303 See Other\\r\\nLocation: /thanks\\r\\n\\r\\n'\ncat\n",
            ),
            // Answers garbage, which must become a 502.
            ("tokens", "#!/bin/sh\necho 'this is not a header'\n"),
        ];
        for (name, body) in scripts {
            let path = cgi.join(name);
            fs::write(&path, body).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let server = bind(PreviewConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            site_dir: site,
            cgi_dir: cgi,
            runtime_root: tmp.path().to_path_buf(),
        })
        .unwrap();
        let addr = server.local_addr().unwrap();
        thread::spawn(move || server.run());

        let r = exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(
            r.contains("Content-Type: text/html; charset=utf-8\r\n"),
            "{r}"
        );
        assert!(r.ends_with("\r\n\r\n<p>form</p>"), "{r}");

        let r = exchange(addr, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            r.contains("Content-Length: 11\r\n") && r.ends_with("\r\n\r\n"),
            "{r}"
        );

        for bad in ["/../secret.txt", "/%2e%2e/secret.txt", "/cgi-bin/other"] {
            let r = exchange(
                addr,
                format!("GET {bad} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            );
            assert!(r.starts_with("HTTP/1.1 404 "), "{bad}: {r}");
        }

        let r = exchange(
            addr,
            b"GET /cgi-bin/captcha?q=1 HTTP/1.1\nHost: x\nX-Test: yes\n\n",
        );
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("hello GET\n"), "{r}");
        assert!(
            r.contains("\nQUERY_STRING=q=1\n") && r.contains("\nHTTP_X_TEST=yes\n"),
            "{r}"
        );
        assert!(
            r.contains(&format!("\nFORMWARDEN_ROOT={}\n", tmp.path().display())),
            "{r}"
        );
        assert!(r.contains("\nREMOTE_ADDR=127.0.0.1\n"), "{r}");
        // Nothing of the test process's own environment leaks through.
        assert!(
            !r.lines()
                .any(|l| l.starts_with("CARGO") || l.starts_with("HOME=")),
            "{r}"
        );

        let r = exchange(
            addr,
            b"POST /cgi-bin/contact HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\
              Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 9\r\n\r\nname=Ada!",
        );
        assert!(r.starts_with("HTTP/1.1 303 See Other\r\n"), "{r}");
        assert!(
            r.contains("Location: /thanks\r\n") && r.ends_with("\r\n\r\nname=Ada!"),
            "{r}"
        );

        let r = exchange(addr, b"GET /cgi-bin/tokens HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 502 "), "{r}");

        let r = exchange(
            addr,
            b"POST /cgi-bin/contact HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n",
        );
        assert!(r.starts_with("HTTP/1.1 413 "), "{r}");

        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        let r = exchange(addr, big.as_bytes());
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");

        let r = exchange(addr, b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 405 ") && r.contains("Allow: GET, HEAD\r\n"),
            "{r}"
        );
    }
}
