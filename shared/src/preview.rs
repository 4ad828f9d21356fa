//! The local development preview: a tiny HTTP/1.1 server on a loopback address that serves
//! the example static contact page from `deploy/site/` and runs the real `captcha`, `contact`
//! and `tokens` executables as CGI processes, one process per request, the way Apache's
//! `mod_cgi` does (RFC 3875). It exists so that README command #1 works without root and
//! without an installed web server, and so that what a developer clicks through is exactly
//! what the executables do under a real server.
//!
//! It is a development preview, not a production server: it answers one request per
//! connection, holds whole bodies in memory, binds whatever address its caller chooses (the
//! `preview` executable only ever chooses loopback) and knows nothing about TLS. It must never
//! open anything under `var/` itself (the executables own all state, and their locking and
//! atomic-write guarantees only hold if nothing else touches those files), never serve a file
//! from outside the site directory, never pass its own environment to a CGI process beyond
//! `PATH`, and never write a client address to its log (the project's privacy rule).

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    site: Arc<Site>,
}

/// What every connection thread needs, resolved once at bind time.
#[derive(Debug)]
struct Site {
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
        site: Arc::new(Site {
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
        let Some(slot) = Slot::take(&self.site) else {
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
struct Slot(Arc<Site>);

impl Slot {
    fn take(site: &Arc<Site>) -> Option<Slot> {
        let before = site.active.fetch_add(1, Ordering::SeqCst);
        if before >= MAX_CONNECTIONS {
            site.active.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Slot(Arc::clone(site)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answers a connection over the cap without reading it; the short timeout keeps the accept
/// loop from ever waiting on such a client.
fn refuse_busy(mut stream: TcpStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let mut response = Response::error(503);
    response.headers.push(("Retry-After".into(), "1".into()));
    let _ = stream.write_all(&response.to_bytes(false));
    eprintln!("preview: - - 503 0ms (too many connections)");
}

// ---------------------------------------------------------------------------------------
// One connection: read one request, answer it, close.
// ---------------------------------------------------------------------------------------

fn handle_connection(site: &Site, mut stream: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    let deadline = started + READ_DEADLINE;
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let _ = stream.set_nodelay(true);

    let (label, response, head_only, drain) = match read_request(&mut stream, deadline) {
        Err(Early::Gone) => return,
        Err(Early::Answer(status, label)) => (label, Response::error(status), false, true),
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

/// Why a connection ends before a request was parsed.
enum Early {
    /// The client closed or went quiet before sending anything worth answering.
    Gone,
    /// The request is refused with this status; the label is what the log line shows.
    Answer(u16, (String, String)),
}

/// Reads and parses the request head; returns it with whatever body bytes arrived with it.
fn read_request(
    stream: &mut TcpStream,
    deadline: Instant,
) -> Result<(RequestHead, Vec<u8>), Early> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find_head_end(&buf) {
            if end > MAX_HEAD {
                return Err(Early::Answer(431, log_label(&buf)));
            }
            let head = parse_head(&buf[..end]).map_err(|s| Early::Answer(s, log_label(&buf)))?;
            return Ok((head, buf[end..].to_vec()));
        }
        if buf.len() >= MAX_HEAD {
            return Err(Early::Answer(431, log_label(&buf)));
        }
        match read_until(stream, &mut chunk, deadline) {
            Ok(0) if buf.is_empty() => return Err(Early::Gone),
            Ok(0) => return Err(Early::Answer(400, log_label(&buf))),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // A browser's speculative connection that never sends anything is not an error
            // worth a log line; a request cut off half-way is.
            Err(e) if e.kind() == io::ErrorKind::TimedOut && !buf.is_empty() => {
                return Err(Early::Answer(408, log_label(&buf)));
            }
            Err(_) => return Err(Early::Gone),
        }
    }
}

/// Method and path for the log line of a request refused before it was parsed, taken from
/// its request line when that much is readable, `-` otherwise. The path is shortened because
/// a refused request may be refused precisely for its size.
fn log_label(buf: &[u8]) -> (String, String) {
    let line = buf
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    let mut parts = std::str::from_utf8(line).unwrap_or("").split(' ');
    match (parts.next(), parts.next()) {
        (Some(method), Some(target))
            if is_token(method) && target.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            let path = target.split('?').next().unwrap_or("");
            (method.to_string(), path.chars().take(200).collect())
        }
        _ => ("-".to_string(), "-".to_string()),
    }
}

/// One read that gives up at the connection's deadline rather than after a per-read timeout,
/// so the deadline bounds the whole request however slowly it arrives.
fn read_until(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    stream.set_read_timeout(Some(left))?;
    match stream.read(buf) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::ErrorKind::TimedOut.into()),
        other => other,
    }
}

/// Routes a parsed request; the flag says whether unread request bytes may remain.
fn answer(
    site: &Site,
    stream: &mut TcpStream,
    head: &RequestHead,
    leftover: Vec<u8>,
    peer: SocketAddr,
    deadline: Instant,
) -> (Response, bool) {
    if !head.target.starts_with('/') {
        // Absolute-form and asterisk-form targets are for proxies and OPTIONS *, neither of
        // which the preview is.
        return (Response::error(400), true);
    }
    let path = head.path();
    if path == "/cgi-bin" || path.starts_with("/cgi-bin/") {
        let Some((name, path_info)) = cgi_route(path) else {
            return (Response::error(404), true);
        };
        let path_info = match path_info.map(decode_path_info) {
            Some(None) => return (Response::error(400), true),
            decoded => decoded.flatten(),
        };
        let body = match read_body(stream, head, leftover, deadline) {
            Ok(body) => body,
            Err(status) => return (Response::error(status), true),
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
        let mut response = Response::error(405);
        response.headers.push(("Allow".into(), "GET, HEAD".into()));
        return (response, drain);
    }
    (serve_static(&site.site_dir, path), drain)
}

/// Reads the declared body, sending `100 Continue` first when the client waits for it.
fn read_body(
    stream: &mut TcpStream,
    head: &RequestHead,
    mut body: Vec<u8>,
    deadline: Instant,
) -> Result<Vec<u8>, u16> {
    // `parse_head` already bounded the length by MAX_BODY, so this conversion cannot fail on
    // any platform with at least 32-bit pointers; refusing is still the safe answer.
    let want = usize::try_from(head.content_length.unwrap_or(0)).map_err(|_| 413u16)?;
    body.truncate(want);
    let expects_continue = head
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if expects_continue && head.version == "HTTP/1.1" && body.len() < want {
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(|_| 400u16)?;
    }
    let mut chunk = [0u8; 8192];
    while body.len() < want {
        let room = (want - body.len()).min(chunk.len());
        match read_until(stream, &mut chunk[..room], deadline) {
            Ok(0) => return Err(400),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(_) => return Err(408),
        }
    }
    Ok(body)
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

// ---------------------------------------------------------------------------------------
// Request head parsing (pure).
// ---------------------------------------------------------------------------------------

/// A parsed request line and header section.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RequestHead {
    method: String,
    /// The raw request-target, as sent (it becomes `REQUEST_URI`).
    target: String,
    /// `HTTP/1.0` or `HTTP/1.1`.
    version: &'static str,
    /// Header fields in arrival order, names as sent, values trimmed.
    headers: Vec<(String, String)>,
    /// The validated `Content-Length`, when one was sent.
    content_length: Option<u64>,
}

impl RequestHead {
    /// The first value of a header, by case-insensitive name.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The target without its query string.
    fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    /// The query string without the `?`; empty when there is none.
    fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }
}

/// Returns the offset just past the blank line that ends the request head, accepting `\n` as
/// well as `\r\n` line ends. Blank lines before the request line are skipped, as RFC 9112
/// asks of servers.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    let mut seen_line = false;
    for (i, &b) in buf.iter().enumerate() {
        if b != b'\n' {
            continue;
        }
        let line = &buf[line_start..i];
        let blank = line.is_empty() || line == b"\r";
        if blank && seen_line {
            return Some(i + 1);
        }
        seen_line |= !blank;
        line_start = i + 1;
    }
    None
}

/// Parses a complete request head (as delimited by [`find_head_end`]); the error is the
/// status to answer with.
fn parse_head(head: &[u8]) -> Result<RequestHead, u16> {
    // Header values may in theory carry obsolete non-ASCII bytes; a development preview can
    // refuse them, and refusing keeps every value a valid environment string.
    let text = std::str::from_utf8(head).map_err(|_| 400u16)?;
    let mut lines = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .skip_while(|l| l.is_empty());
    let request_line = lines.next().ok_or(400u16)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    if !is_token(method) || target.is_empty() || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(400);
    }
    let version = match version {
        "HTTP/1.1" => "HTTP/1.1",
        "HTTP/1.0" => "HTTP/1.0",
        v if is_http_version(v) => return Err(505),
        _ => return Err(400),
    };

    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        // Obsolete line folding and whitespace before the colon are both rejected by RFC
        // 9112, because different parsers disagree on them (request smuggling).
        if line.starts_with([' ', '\t']) {
            return Err(400);
        }
        let (name, value) = line.split_once(':').ok_or(400u16)?;
        if !is_token(name) {
            return Err(400);
        }
        let value = value.trim_matches([' ', '\t']);
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(400);
        }
        headers.push((name.to_string(), value.to_string()));
    }

    let named = |n: &'static str| {
        headers
            .iter()
            .filter(move |(h, _)| h.eq_ignore_ascii_case(n))
            .map(|(_, v): &(String, String)| v.as_str())
    };
    if version == "HTTP/1.1" && named("host").count() != 1 {
        return Err(400);
    }
    if named("transfer-encoding").next().is_some() {
        // Chunked uploads are not worth supporting here; browsers and curl send a length
        // for forms, and RFC 9112 allows 411 for this.
        return Err(411);
    }
    let mut content_length = None;
    for value in named("content-length").flat_map(|v| v.split(',')) {
        let value = value.trim_matches([' ', '\t']);
        if value.is_empty() || value.len() > 19 || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(400);
        }
        let n: u64 = value.parse().map_err(|_| 400u16)?;
        // Differing lengths mean the message framing is ambiguous; refusing is the only safe
        // reading.
        if content_length.is_some_and(|seen| seen != n) {
            return Err(400);
        }
        content_length = Some(n);
    }
    if content_length.is_some_and(|n| n > MAX_BODY) {
        return Err(413);
    }
    Ok(RequestHead {
        method: method.to_string(),
        target: target.to_string(),
        version,
        headers,
        content_length,
    })
}

/// An RFC 9110 token: what method and field names are made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_http_version(v: &str) -> bool {
    v.strip_prefix("HTTP/")
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(major, minor)| {
            !major.is_empty()
                && !minor.is_empty()
                && major.bytes().all(|b| b.is_ascii_digit())
                && minor.bytes().all(|b| b.is_ascii_digit())
        })
}

/// Decodes `%XX` escapes; `None` for a malformed escape.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------
// Static files.
// ---------------------------------------------------------------------------------------

/// Maps a URL path to a regular file inside `site_dir` (which must be canonical), or `None`.
///
/// Segments are checked after percent-decoding, so `%2e%2e` and `..%2f` are caught like a
/// literal `..`; segments starting with a dot are refused outright (that covers `.`, `..` and
/// hidden files such as `.htaccess`); and the canonical result must still lie inside
/// `site_dir`, which catches symlinks pointing out of it.
fn resolve_static(site_dir: &Path, url_path: &str) -> Option<PathBuf> {
    if !url_path.starts_with('/') {
        return None;
    }
    let decoded = String::from_utf8(percent_decode(url_path)?).ok()?;
    let mut candidate = site_dir.to_path_buf();
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        if segment.starts_with('.') || segment.contains(['\\', '\0']) {
            return None;
        }
        candidate.push(segment);
    }
    if candidate.is_dir() {
        candidate.push("index.html");
    }
    let real = candidate.canonicalize().ok()?;
    (real.starts_with(site_dir) && real.is_file()).then_some(real)
}

fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(OsStr::to_str)
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        Some("ico") => "image/x-icon",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn serve_static(site_dir: &Path, url_path: &str) -> Response {
    let Some(file) = resolve_static(site_dir, url_path) else {
        return Response::error(404);
    };
    let read = fs::File::open(&file).and_then(|f| {
        let mut body = Vec::new();
        f.take(MAX_STATIC_FILE + 1).read_to_end(&mut body)?;
        Ok(body)
    });
    match read {
        Ok(body) if body.len() as u64 <= MAX_STATIC_FILE => Response {
            status: 200,
            reason: "OK".into(),
            headers: vec![
                ("Content-Type".into(), content_type(&file).into()),
                // A preview should always show the file as it is on disk right now.
                ("Cache-Control".into(), "no-cache".into()),
                ("X-Content-Type-Options".into(), "nosniff".into()),
            ],
            body,
        },
        Ok(_) => Response::error(404),
        Err(e) => {
            eprintln!("preview: cannot read {}: {e}", file.display());
            Response::error(500)
        }
    }
}

// ---------------------------------------------------------------------------------------
// CGI.
// ---------------------------------------------------------------------------------------

/// Splits `/cgi-bin/<name>[/<path-info>]`; `None` unless the name is one of [`CGI_NAMES`].
fn cgi_route(path: &str) -> Option<(&'static str, Option<&str>)> {
    let rest = path.strip_prefix("/cgi-bin/")?;
    let (name, path_info) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    };
    let name = CGI_NAMES.into_iter().find(|n| *n == name)?;
    Some((name, path_info))
}

/// `PATH_INFO` is decoded, as Apache and RFC 3875 have it; `None` when it does not decode to
/// text fit for an environment variable.
fn decode_path_info(raw: &str) -> Option<String> {
    let decoded = String::from_utf8(percent_decode(raw)?).ok()?;
    (!decoded.chars().any(char::is_control)).then_some(decoded)
}

/// What a CGI process is told about the request it serves.
struct CgiRequest<'a> {
    name: &'static str,
    path_info: Option<&'a str>,
    head: &'a RequestHead,
    peer: SocketAddr,
    local: SocketAddr,
}

/// The CGI meta-variables (RFC 3875 section 4.1) plus `FORMWARDEN_ROOT`; with `PATH` this is
/// the child's whole environment.
fn cgi_env(site: &Site, req: &CgiRequest<'_>) -> Vec<(String, OsString)> {
    let head = req.head;
    let mut env: Vec<(String, OsString)> = Vec::new();
    let mut set = |k: &str, v: &str| env.push((k.to_string(), v.into()));
    set("GATEWAY_INTERFACE", "CGI/1.1");
    set("SERVER_PROTOCOL", head.version);
    set("SERVER_SOFTWARE", SERVER_SOFTWARE);
    set("SERVER_NAME", &server_name(head.header("host"), req.local));
    set("SERVER_ADDR", &req.local.ip().to_string());
    set("SERVER_PORT", &req.local.port().to_string());
    set("REQUEST_SCHEME", "http");
    set("REQUEST_METHOD", &head.method);
    set("REQUEST_URI", &head.target);
    set("SCRIPT_NAME", &format!("/cgi-bin/{}", req.name));
    if let Some(path_info) = req.path_info {
        set("PATH_INFO", path_info);
    }
    set("QUERY_STRING", head.query());
    if let Some(n) = head.content_length {
        set("CONTENT_LENGTH", &n.to_string());
    }
    if let Some(ct) = head.header("content-type") {
        set("CONTENT_TYPE", ct);
    }
    set("REMOTE_ADDR", &req.peer.ip().to_string());
    set("REMOTE_PORT", &req.peer.port().to_string());

    // Every request header becomes HTTP_<NAME>; repeated headers are joined the way Apache
    // joins them.
    let mut http: Vec<(String, String)> = Vec::new();
    for (name, value) in &head.headers {
        let Some(var) = http_var(name) else { continue };
        match http.iter_mut().find(|(v, _)| *v == var) {
            Some((_, joined)) => {
                joined.push_str(if var == "HTTP_COOKIE" { "; " } else { ", " });
                joined.push_str(value);
            }
            None => http.push((var, value.clone())),
        }
    }
    for (var, value) in http {
        set(&var, &value);
    }

    env.push((
        "SCRIPT_FILENAME".into(),
        site.cgi_dir.join(req.name).into_os_string(),
    ));
    env.push((
        "DOCUMENT_ROOT".into(),
        site.site_dir.clone().into_os_string(),
    ));
    env.push((
        "FORMWARDEN_ROOT".into(),
        site.runtime_root.clone().into_os_string(),
    ));
    env
}

/// The `HTTP_*` name for a request header, or `None` for a header that must not get one.
fn http_var(name: &str) -> Option<String> {
    // Content-Length and Content-Type have their own CGI names. `Proxy` would become
    // HTTP_PROXY, which many HTTP clients read as their proxy setting ("httpoxy"). Names with
    // characters other than letters, digits and '-' are dropped, as Apache does, so that
    // `X_Foo` cannot impersonate `X-Foo` once both become HTTP_X_FOO.
    if ["content-length", "content-type", "proxy"]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return None;
    }
    Some(format!(
        "HTTP_{}",
        name.to_ascii_uppercase().replace('-', "_")
    ))
}

/// `SERVER_NAME`: the host the client asked for when it is a plausible host name, otherwise
/// the address the request arrived on.
fn server_name(host: Option<&str>, local: SocketAddr) -> String {
    let name = host.map(|h| {
        if h.starts_with('[') {
            h.split_inclusive(']').next().unwrap_or(h)
        } else {
            h.split(':').next().unwrap_or(h)
        }
    });
    match name {
        Some(n)
            if !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b)) =>
        {
            n.to_string()
        }
        _ => local.ip().to_string(),
    }
}

/// Runs one executable for one request and turns its output into the answer.
fn run_cgi(site: &Site, req: &CgiRequest<'_>, body: Vec<u8>) -> Response {
    let program = site.cgi_dir.join(req.name);
    let mut command = Command::new(&program);
    command
        .env_clear()
        .env("PATH", &site.path_env)
        .envs(cgi_env(site, req))
        // Apache runs a CGI program in its own directory; doing the same keeps behaviour
        // identical, and is why every path handed over is absolute.
        .current_dir(&site.cgi_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!(
                "preview: cannot run {}: {e} (run `cargo build --release`?)",
                program.display()
            );
            return Response::error(500);
        }
    };

    // The body is written from its own thread: a program that writes a lot before reading
    // its input would otherwise deadlock against us. A program that never reads it makes the
    // write fail with a broken pipe, which is harmless.
    if let Some(mut stdin) = child.stdin.take() {
        thread::spawn(move || {
            let _ = stdin.write_all(&body);
        });
    }
    let stderr_done = child
        .stderr
        .take()
        .map(|stderr| forward_stderr(req.name, stderr));
    let (tx, rx) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        thread::spawn(move || {
            let mut out = Vec::new();
            let read = stdout.take(MAX_CGI_OUTPUT + 1).read_to_end(&mut out);
            let _ = tx.send(read.map(|_| out));
        });
    }

    let started = Instant::now();
    let output = rx.recv_timeout(CGI_TIMEOUT);
    let finished = wait_until(&mut child, started + CGI_TIMEOUT);
    if let Some(done) = stderr_done {
        // Waiting briefly lets the program's own log lines appear before the request's line;
        // a grandchild still holding the pipe must not hold the request up.
        let _ = done.recv_timeout(Duration::from_millis(500));
    }
    let output = match output {
        Ok(Ok(out)) if out.len() as u64 > MAX_CGI_OUTPUT => {
            eprintln!(
                "preview: {} wrote more than {MAX_CGI_OUTPUT} bytes",
                req.name
            );
            return Response::error(502);
        }
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            eprintln!("preview: reading the output of {} failed: {e}", req.name);
            return Response::error(502);
        }
        Err(_) => {
            eprintln!(
                "preview: {} did not finish within {CGI_TIMEOUT:?}; killed",
                req.name
            );
            return Response::error(504);
        }
    };
    match finished {
        Some(status) if !status.success() => {
            eprintln!("preview: {} exited with {status}", req.name);
        }
        Some(_) => {}
        None => eprintln!(
            "preview: {} closed its output but did not exit; killed",
            req.name
        ),
    }
    match parse_cgi_response(&output) {
        Ok(cgi) => Response {
            status: cgi.status,
            reason: cgi.reason,
            headers: cgi.headers,
            body: cgi.body,
        },
        Err(why) => {
            eprintln!("preview: malformed response from {}: {why}", req.name);
            Response::error(502)
        }
    }
}

/// Copies the program's stderr, line by line, to ours (the preview's error log); the channel
/// reports when the program closed it.
fn forward_stderr(name: &'static str, stderr: impl Read + Send + 'static) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(stderr);
        let mut line = Vec::new();
        while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let text = String::from_utf8_lossy(&line);
            eprintln!("cgi {name}: {}", text.trim_end_matches(['\r', '\n']));
            line.clear();
        }
        let _ = tx.send(());
    });
    rx
}

/// Waits for the child until `deadline`, then kills it; `None` when it had to be killed.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<std::process::ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(2)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// A CGI program's answer, as the server will forward it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgiResponse {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// At most this many header lines are accepted from a CGI program.
const MAX_CGI_HEADERS: usize = 100;

/// Parses a CGI response (RFC 3875 section 6): header lines up to a blank line, `\n` or
/// `\r\n`, then the body. `Status` sets the status (default 200, or 302 for a redirect with
/// `Location` alone); the framing headers are dropped because the server frames the answer
/// itself. The error says why the response is malformed, for the log.
fn parse_cgi_response(out: &[u8]) -> Result<CgiResponse, &'static str> {
    let mut pos = 0;
    let mut seen = 0;
    let mut status = None;
    let mut has_location = false;
    let mut headers = Vec::new();
    loop {
        let Some(nl) = out[pos..].iter().position(|&b| b == b'\n') else {
            return Err("the output ended before the blank line that ends the headers");
        };
        let raw = &out[pos..pos + nl];
        pos += nl + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.is_empty() {
            break;
        }
        seen += 1;
        if seen > MAX_CGI_HEADERS {
            return Err("too many header lines");
        }
        let line = std::str::from_utf8(raw).map_err(|_| "a header line is not UTF-8")?;
        let (name, value) = line.split_once(':').ok_or("a header line has no colon")?;
        if !is_token(name) {
            return Err("a header name is not a token");
        }
        let value = value.trim_matches([' ', '\t']);
        // A stray carriage return or other control character in a value could split our
        // answer into two responses.
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err("a header value holds a control character");
        }
        if name.eq_ignore_ascii_case("status") {
            if status.is_some() {
                return Err("two Status headers");
            }
            status = Some(parse_status(value)?);
        } else if !["content-length", "transfer-encoding", "connection"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
        {
            // The framing headers are left out above because the server frames the answer
            // itself; a wrong length from the program must not corrupt the connection.
            has_location |= name.eq_ignore_ascii_case("location");
            headers.push((name.to_string(), value.to_string()));
        }
    }
    if seen == 0 {
        return Err("no header at all before the blank line");
    }
    let (status, reason) = status.unwrap_or_else(|| {
        if has_location {
            (302, reason_phrase(302).to_string())
        } else {
            (200, reason_phrase(200).to_string())
        }
    });
    Ok(CgiResponse {
        status,
        reason,
        headers,
        body: out[pos..].to_vec(),
    })
}

/// Parses a `Status` value such as `503 Service Unavailable` or `404`.
fn parse_status(value: &str) -> Result<(u16, String), &'static str> {
    let (code, reason) = value.split_once(' ').unwrap_or((value, ""));
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the Status header does not start with a three-digit code");
    }
    let code: u16 = code
        .parse()
        .map_err(|_| "the Status code is not a number")?;
    // An interim 1xx makes no sense as a script's final answer.
    if !(200..=599).contains(&code) {
        return Err("the Status code is out of range");
    }
    let reason = reason.trim();
    let reason = if reason.is_empty() {
        reason_phrase(code)
    } else {
        reason
    };
    Ok((code, reason.to_string()))
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

// ---------------------------------------------------------------------------------------
// Responses.
// ---------------------------------------------------------------------------------------

/// An answer about to be written.
#[derive(Debug)]
struct Response {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    /// A small HTML page for a status the preview itself decides.
    fn error(status: u16) -> Response {
        let reason = reason_phrase(status);
        let body = format!(
            "<!doctype html>\n<html lang=\"en\"><meta charset=\"utf-8\"><title>{status} {reason}</title>\n\
             <h1>{status} {reason}</h1>\n<p>{SERVER_SOFTWARE}</p></html>\n"
        );
        Response {
            status,
            reason: reason.to_string(),
            headers: vec![("Content-Type".into(), "text/html; charset=utf-8".into())],
            body: body.into_bytes(),
        }
    }

    /// Serializes the answer; `head_only` (for HEAD) keeps the length but drops the body.
    fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nDate: {}\r\nServer: {SERVER_SOFTWARE}\r\n",
            self.status,
            self.reason,
            http_date(SystemTime::now())
        );
        for (name, value) in &self.headers {
            // Writing into a String cannot fail.
            let _ = write!(out, "{name}: {value}\r\n");
        }
        // 204 and 304 answers carry no body by definition (RFC 9110), whatever was produced.
        let bodiless = matches!(self.status, 204 | 304);
        if !bodiless {
            let _ = write!(out, "Content-Length: {}\r\n", self.body.len());
        }
        out.push_str("Connection: close\r\n\r\n");
        let mut bytes = out.into_bytes();
        if !head_only && !bodiless {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

/// Formats a time as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), which RFC 9110 asks
/// an origin server with a clock to send as `Date`.
fn http_date(time: SystemTime) -> String {
    // Day 0 of the Unix epoch was a Thursday.
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let (hour, minute, second) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    // Civil-from-days (Howard Hinnant's algorithm), restricted to dates after 1970.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {hour:02}:{minute:02}:{second:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn head(text: &str) -> Result<RequestHead, u16> {
        parse_head(text.as_bytes())
    }

    #[test]
    fn head_end_is_found_with_crlf_lf_and_leading_blank_lines() {
        // Both line-end styles end the head at the first blank line after the request line.
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"),
            Some(27)
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.1\nHost: a\n\nbody"), Some(24));
        assert_eq!(find_head_end(b"\r\n\r\nGET / HTTP/1.0\r\n\r\n"), Some(22));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(find_head_end(b"\r\n\r\n"), None);
    }

    #[test]
    fn refused_requests_are_logged_by_method_and_path_only() {
        // The log shows what was asked for, never the query string, and `-` for garbage.
        let label = |b: &[u8]| log_label(b);
        assert_eq!(
            label(b"POST /cgi-bin/contact?x=1 HTTP/1.1\r\nHost"),
            ("POST".into(), "/cgi-bin/contact".into())
        );
        assert_eq!(label(b"\r\nGET /a"), ("GET".into(), "/a".into()));
        assert_eq!(label(b"GET"), ("-".into(), "-".into()));
        assert_eq!(label(b"\x16\x03\x01 binary"), ("-".into(), "-".into()));
        assert_eq!(label(b""), ("-".into(), "-".into()));
    }

    #[test]
    fn a_plain_request_head_parses() {
        // Names keep their spelling, values are trimmed, the target stays raw.
        let h = head("\r\nPOST /cgi-bin/contact?x=1 HTTP/1.1\r\nHost: localhost:8080\r\nContent-Type:  text/plain \r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(h.method, "POST");
        assert_eq!(h.target, "/cgi-bin/contact?x=1");
        assert_eq!(h.path(), "/cgi-bin/contact");
        assert_eq!(h.query(), "x=1");
        assert_eq!(h.version, "HTTP/1.1");
        assert_eq!(h.header("content-type"), Some("text/plain"));
        assert_eq!(h.content_length, Some(5));
        // LF-only line ends and HTTP/1.0 without Host are accepted.
        let h = head("GET / HTTP/1.0\n\n").unwrap();
        assert_eq!((h.version, h.content_length), ("HTTP/1.0", None));
    }

    #[test]
    fn bad_request_heads_get_the_right_status() {
        // Each case names the status a real server owes the client.
        let cases = [
            ("GET / HTTP/1.1\r\n\r\n", 400),                         // no Host
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),   // two Hosts
            ("GET /  HTTP/1.1\r\nHost: a\r\n\r\n", 400),             // double space
            ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),              // other version
            ("GET / FOO\r\nHost: a\r\n\r\n", 400),                   // no version
            ("G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),              // bad method
            ("GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400),   // obs-fold
            ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),             // space before colon
            ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", 400), // control char
            ("GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400),   // no colon
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                411,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1048577\r\n\r\n",
                413,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
                400,
            ),
        ];
        for (text, status) in cases {
            assert_eq!(head(text), Err(status), "{text:?}");
        }
        // Repeating the same length is harmless and accepted.
        let h =
            head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\ncontent-length: 7\r\n\r\n");
        assert_eq!(h.map(|h| h.content_length), Ok(Some(7)));
        // A body of exactly the limit is allowed.
        let h = head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n");
        assert_eq!(h.map(|h| h.content_length), Ok(Some(MAX_BODY)));
    }

    #[test]
    fn cgi_responses_parse_with_either_line_end() {
        // LF and CRLF produce the same result, and the body is kept byte for byte.
        for text in [
            "Content-Type: text/plain\n\nhello\r\n",
            "Content-Type: text/plain\r\n\r\nhello\r\n",
        ] {
            let r = parse_cgi_response(text.as_bytes()).unwrap();
            assert_eq!((r.status, r.reason.as_str()), (200, "OK"));
            assert_eq!(
                r.headers,
                vec![("Content-Type".into(), "text/plain".into())]
            );
            assert_eq!(r.body, b"hello\r\n");
        }
    }

    #[test]
    fn cgi_status_and_location_set_the_status() {
        // Status wins and is not forwarded as a header; a bare code gets its usual phrase.
        let r = parse_cgi_response(b"Status: 503 Service Unavailable\r\nRetry-After: 1\r\n\r\n")
            .unwrap();
        assert_eq!((r.status, r.reason.as_str()), (503, "Service Unavailable"));
        assert_eq!(r.headers, vec![("Retry-After".into(), "1".into())]);
        let r = parse_cgi_response(b"Status: 429\n\n").unwrap();
        assert_eq!((r.status, r.reason.as_str()), (429, "Too Many Requests"));
        // Location alone is a redirect; with a Status the Status is kept.
        let r = parse_cgi_response(b"Location: /thanks.html\n\n").unwrap();
        assert_eq!(r.status, 302);
        let r = parse_cgi_response(b"Status: 303 See Other\nLocation: /\n\n").unwrap();
        assert_eq!(r.status, 303);
        // The script's framing headers are dropped: the server frames the answer itself.
        let r = parse_cgi_response(b"Content-Length: 99\nConnection: keep-alive\nX-A: b\n\nxy")
            .unwrap();
        assert_eq!(r.headers, vec![("X-A".into(), "b".into())]);
    }

    #[test]
    fn malformed_cgi_responses_are_rejected() {
        // Every one of these must become a 502, never a half-forwarded answer.
        let cases: [&[u8]; 10] = [
            b"",
            b"Content-Type: text/plain\n",
            b"Content-Type: text/plain",
            b"\nbody",
            b"no colon here\n\n",
            b"Bad Name: x\n\n",
            b"X: a\rInjected: b\n\n",
            b"Status: abc\n\n",
            b"Status: 100 Continue\n\n",
            b"Status: 200\nStatus: 500\n\n",
        ];
        for out in cases {
            assert!(
                parse_cgi_response(out).is_err(),
                "{:?}",
                String::from_utf8_lossy(out)
            );
        }
    }

    #[test]
    fn static_paths_never_leave_the_site_directory() {
        // Traversal in every spelling, hidden files and escaping symlinks all resolve to
        // nothing; ordinary files and directory indexes resolve inside the site.
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let site = root.join("site");
        fs::create_dir_all(site.join("sub")).unwrap();
        fs::write(site.join("index.html"), "index").unwrap();
        fs::write(site.join("style.css"), "css").unwrap();
        fs::write(site.join("sub/index.html"), "sub").unwrap();
        fs::write(site.join(".htaccess"), "hidden").unwrap();
        fs::write(root.join("secret.txt"), "secret").unwrap();
        symlink(root.join("secret.txt"), site.join("escape.txt")).unwrap();
        symlink(&root, site.join("up")).unwrap();
        symlink(site.join("style.css"), site.join("alias.css")).unwrap();

        let ok = |p: &str| resolve_static(&site, p);
        assert_eq!(ok("/"), Some(site.join("index.html")));
        assert_eq!(ok("/index.html"), Some(site.join("index.html")));
        assert_eq!(ok("/style.css"), Some(site.join("style.css")));
        assert_eq!(ok("/sub"), Some(site.join("sub/index.html")));
        assert_eq!(ok("/sub/"), Some(site.join("sub/index.html")));
        assert_eq!(ok("//style.css"), Some(site.join("style.css")));
        assert_eq!(ok("/%73tyle.css"), Some(site.join("style.css")));
        assert_eq!(ok("/alias.css"), Some(site.join("style.css")));
        for bad in [
            "/../secret.txt",
            "/sub/../../secret.txt",
            "/%2e%2e/secret.txt",
            "/%2E%2E%2Fsecret.txt",
            "/..%2fsecret.txt",
            "/sub/%2e%2e/%2e%2e/secret.txt",
            "/./index.html",
            "/.htaccess",
            "/escape.txt",
            "/up/secret.txt",
            "/missing.html",
            "/bad%zzescape",
            "/%00",
            "/sub%5c..%5c..%5csecret.txt",
            "index.html",
            "*",
        ] {
            assert_eq!(ok(bad), None, "{bad}");
        }
        // A symlink that leaves and comes back ends inside the site, which is all that counts.
        assert_eq!(ok("/up/site/index.html"), Some(site.join("index.html")));
        // An absolute path in the URL still resolves below the site, never to the real root.
        assert_eq!(ok(&format!("/{}", root.join("secret.txt").display())), None);
    }

    #[test]
    fn content_types_follow_the_extension() {
        // The preview must label the site's own file types correctly for browsers.
        assert_eq!(
            content_type(Path::new("a/index.html")),
            "text/html; charset=utf-8"
        );
        assert_eq!(
            content_type(Path::new("style.CSS")),
            "text/css; charset=utf-8"
        );
        assert_eq!(
            content_type(Path::new("a.js")),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("a.png")), "image/png");
        assert_eq!(content_type(Path::new("a.svg")), "image/svg+xml");
        assert_eq!(content_type(Path::new("favicon.ico")), "image/x-icon");
        assert_eq!(
            content_type(Path::new("README")),
            "application/octet-stream"
        );
    }

    #[test]
    fn cgi_routes_accept_only_the_three_executables() {
        // Any other name, and names smuggled through encoding, are refused.
        assert_eq!(cgi_route("/cgi-bin/captcha"), Some(("captcha", None)));
        assert_eq!(
            cgi_route("/cgi-bin/tokens/site-a"),
            Some(("tokens", Some("/site-a")))
        );
        assert_eq!(cgi_route("/cgi-bin/contact/"), Some(("contact", Some("/"))));
        for bad in [
            "/cgi-bin/",
            "/cgi-bin/preview",
            "/cgi-bin/../captcha",
            "/cgi-bin/captcha2",
            "/cgi-bin/%63aptcha",
            "/captcha",
        ] {
            assert_eq!(cgi_route(bad), None, "{bad}");
        }
        assert_eq!(decode_path_info("/a%20b"), Some("/a b".into()));
        assert_eq!(decode_path_info("/a%0ab"), None);
        assert_eq!(decode_path_info("/a%zz"), None);
    }

    fn test_site() -> Site {
        Site {
            site_dir: "/srv/site".into(),
            cgi_dir: "/srv/cgi".into(),
            runtime_root: "/srv/root".into(),
            path_env: DEFAULT_PATH.into(),
            active: AtomicUsize::new(0),
        }
    }

    #[test]
    fn cgi_environment_carries_the_meta_variables() {
        // The environment is exactly what RFC 3875 and Apache give, plus FORMWARDEN_ROOT.
        let head = head(
            "POST /cgi-bin/contact/x%20y?a=1&b=2 HTTP/1.1\r\nHost: localhost:8080\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\
             Accept-Language: en\r\nCookie: a=1\r\nCookie: b=2\r\nX_Spoof: 1\r\nProxy: evil\r\n\
             X-Forwarded-For: 10.0.0.1\r\n\r\n",
        )
        .unwrap();
        let req = CgiRequest {
            name: "contact",
            path_info: Some("/x y"),
            head: &head,
            peer: "127.0.0.1:50000".parse().unwrap(),
            local: "127.0.0.1:8080".parse().unwrap(),
        };
        let env = cgi_env(&test_site(), &req);
        let get = |k: &str| {
            env.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.to_string_lossy().into_owned())
        };
        let expect = [
            ("GATEWAY_INTERFACE", "CGI/1.1"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("SERVER_SOFTWARE", "formwarden-preview"),
            ("SERVER_NAME", "localhost"),
            ("SERVER_PORT", "8080"),
            ("REQUEST_METHOD", "POST"),
            ("REQUEST_URI", "/cgi-bin/contact/x%20y?a=1&b=2"),
            ("SCRIPT_NAME", "/cgi-bin/contact"),
            ("PATH_INFO", "/x y"),
            ("QUERY_STRING", "a=1&b=2"),
            ("CONTENT_LENGTH", "3"),
            ("CONTENT_TYPE", "application/x-www-form-urlencoded"),
            ("REMOTE_ADDR", "127.0.0.1"),
            ("REMOTE_PORT", "50000"),
            ("HTTP_HOST", "localhost:8080"),
            ("HTTP_ACCEPT_LANGUAGE", "en"),
            ("HTTP_COOKIE", "a=1; b=2"),
            ("HTTP_X_FORWARDED_FOR", "10.0.0.1"),
            ("SCRIPT_FILENAME", "/srv/cgi/contact"),
            ("FORMWARDEN_ROOT", "/srv/root"),
        ];
        for (k, v) in expect {
            assert_eq!(get(k).as_deref(), Some(v), "{k}");
        }
        for absent in [
            "HTTP_CONTENT_LENGTH",
            "HTTP_CONTENT_TYPE",
            "HTTP_X_SPOOF",
            "HTTP_PROXY",
            "PATH",
        ] {
            assert_eq!(get(absent), None, "{absent}");
        }
        // Without a body and a path-info those variables are absent, while QUERY_STRING is
        // always set, empty if need be.
        let head = self::head("GET /cgi-bin/captcha HTTP/1.0\r\n\r\n").unwrap();
        let req = CgiRequest {
            name: "captcha",
            path_info: None,
            head: &head,
            ..req
        };
        let env = cgi_env(&test_site(), &req);
        let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
        assert!(!names.contains(&"CONTENT_LENGTH") && !names.contains(&"PATH_INFO"));
        assert!(env.iter().any(|(n, v)| n == "QUERY_STRING" && v.is_empty()));
        assert!(
            env.iter()
                .any(|(n, v)| n == "SERVER_NAME" && v == "127.0.0.1")
        );
    }

    #[test]
    fn percent_decoding_is_strict() {
        // A malformed escape is an error, not a literal, so it cannot slip past the checks.
        assert_eq!(percent_decode("/a%2Fb%2e"), Some(b"/a/b.".to_vec()));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%g0"), None);
        assert_eq!(percent_decode("a+b"), Some(b"a+b".to_vec()));
    }

    #[test]
    fn dates_use_the_imf_fixdate_format() {
        // The example from RFC 9110, and a leap day.
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(http_date(at(784_111_777)), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(at(951_782_400)), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(http_date(at(0)), "Thu, 01 Jan 1970 00:00:00 GMT");
    }

    #[test]
    fn responses_are_framed_with_length_and_close() {
        // Every answer carries its length and closes; HEAD keeps the length, drops the body.
        let r = Response::error(404);
        let full = String::from_utf8(r.to_bytes(false)).unwrap();
        assert!(full.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(full.contains(&format!("\r\nContent-Length: {}\r\n", r.body.len())));
        assert!(full.contains("\r\nConnection: close\r\n\r\n<!doctype html>"));
        let head_only = String::from_utf8(r.to_bytes(true)).unwrap();
        assert!(head_only.ends_with("\r\n\r\n") && head_only.contains("Content-Length"));
    }

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
