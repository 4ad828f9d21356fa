//! The FastCGI responder: when a process manager (spawn-fcgi, Apache mod_fcgid, a FastCGI
//! process manager) starts an executable with a listening socket on fd 0, the executable
//! serves requests from it in a loop instead of answering one CGI request. This module owns
//! detecting that socket, accepting connections on it (capped, each served by a thread of
//! its own, threads reused), the FastCGI 1.0 record protocol for the Responder role, and
//! turning each request's PARAMS and STDIN into a [`Request`] and a body for the same
//! handler plain CGI calls.
//!
//! It must never read a request's environment from the process environment (each request
//! brings its own CGI variables; the runtime root alone is the process's, fixed at start by
//! `app::App::discover` and never taken from a request), never let one connection's input
//! end the process (every length is checked before it is trusted, every read and write is
//! bounded in time, malformed input just closes that connection), and never share state
//! between requests that the lock runner relies on: a request takes its locks through files
//! it opens itself, so requests inside one process contend with each other exactly as
//! separate CGI processes do. It never multiplexes requests on one connection.

use crate::cgi::{Request, Response};
use crate::handler::Handler;
use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// The variable that lists the web servers allowed to connect over TCP (FastCGI spec,
/// section 3.2): comma-separated IP addresses. Unix sockets are guarded by file permissions.
pub const WEB_SERVER_ADDRS_ENV: &str = "FCGI_WEB_SERVER_ADDRS";

/// The protocol version every record carries.
const VERSION_1: u8 = 1;
/// Bytes in a record header.
const HEADER_LEN: usize = 8;
/// The largest record content: the length field has 16 bits.
const MAX_CONTENT: usize = 65535;

// Record types (FastCGI spec, section 8).
const BEGIN_REQUEST: u8 = 1;
const ABORT_REQUEST: u8 = 2;
const END_REQUEST: u8 = 3;
const PARAMS: u8 = 4;
const STDIN: u8 = 5;
const STDOUT: u8 = 6;
const GET_VALUES: u8 = 9;
const GET_VALUES_RESULT: u8 = 10;
const UNKNOWN_TYPE: u8 = 11;

/// The only role we play; AUTHORIZER (2) and FILTER (3) are refused.
const ROLE_RESPONDER: u16 = 1;
/// BEGIN_REQUEST flag: keep the connection open after the request.
const FLAG_KEEP_CONN: u8 = 1;

// END_REQUEST protocol status values.
const REQUEST_COMPLETE: u8 = 0;
const CANT_MPX_CONN: u8 = 1;
const UNKNOWN_ROLE: u8 = 3;

/// Thread stack for a connection: Rust's default for spawned threads, far above what the
/// handlers (TOML parsing, PNG rendering) use.
const CONN_STACK: usize = 2 * 1024 * 1024;

/// The bounds a responder keeps. [`ResponderLimits::default`] is what the executables use.
#[derive(Debug, Clone)]
pub struct ResponderLimits {
    /// Connections served at once, one thread each. When all are taken the next connection
    /// waits (in the listen backlog or in the accept loop), and a connection that has been
    /// waiting for a request for a while (kept open by the web server, or silent) is closed
    /// to make room.
    pub max_conns: usize,
    /// Total bytes of one request's PARAMS stream; more is answered with a 400.
    pub max_params_bytes: usize,
    /// Bytes of request body buffered for the handler; the handler's own limit (at most
    /// 1 MiB, checked against `CONTENT_LENGTH`) is below it, so an honest body always fits.
    pub max_stdin_bytes: usize,
    /// Bytes of PARAMS or STDIN that we read and drop after a limit was hit, so the web
    /// server can finish sending and still read our answer; beyond it we close.
    pub max_discard_bytes: u64,
    /// Longest wait for any single read.
    pub read_timeout: Duration,
    /// Longest wait for any single write, and the bound on writing one answer.
    pub write_timeout: Duration,
    /// Longest time from a request's BEGIN_REQUEST to the end of its STDIN.
    pub request_deadline: Duration,
    /// Longest time a connection may wait for its (next) BEGIN_REQUEST.
    pub idle_timeout: Duration,
    /// Records that start no request (management records, records for other ids) accepted
    /// between two requests before the connection is taken for abuse and closed.
    pub max_stray_records: usize,
}

impl Default for ResponderLimits {
    fn default() -> Self {
        ResponderLimits {
            max_conns: 32,
            max_params_bytes: 64 * 1024,
            max_stdin_bytes: 2 * 1024 * 1024,
            max_discard_bytes: 64 * 1024 * 1024,
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            request_deadline: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
            max_stray_records: 256,
        }
    }
}

/// True when fd 0 is a listening socket, i.e. a FastCGI process manager started us. Under
/// CGI, fd 0 is a pipe, a file, `/dev/null` or a connected socket (mod_cgid), never a
/// listening one. Executables that decide between a command line and a web mode use this.
pub fn stdin_is_listener() -> bool {
    is_listening_socket(0)
}

fn is_listening_socket(fd: RawFd) -> bool {
    let mut accepting: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `accepting`, a live local of exactly
    // that size. A descriptor that is closed or is not a socket only makes it fail.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&raw mut accepting).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        return accepting != 0;
    }
    // A system without SO_ACCEPTCONN: the spec's own test is that fd 0 is a socket without
    // a peer (getpeername fails with ENOTCONN).
    if io::Error::last_os_error().raw_os_error() == Some(libc::ENOPROTOOPT) {
        return peer_is_missing(fd);
    }
    false
}

fn peer_is_missing(fd: RawFd) -> bool {
    // SAFETY: sockaddr_storage is plain integers, for which all-zero bytes are valid.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getpeername writes at most `len` bytes into `addr`, which is that large.
    let rc = unsafe { libc::getpeername(fd, (&raw mut addr).cast(), &mut len) };
    rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOTCONN)
}

/// The address family of the socket on `fd`.
fn socket_family(fd: RawFd) -> io::Result<libc::c_int> {
    // SAFETY: sockaddr_storage is plain integers, for which all-zero bytes are valid.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into `addr`, which is that large.
    let rc = unsafe { libc::getsockname(fd, (&raw mut addr).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(libc::c_int::from(addr.ss_family))
}

/// A listening socket we accept FastCGI connections on.
enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// Set once fd 0 has been handed to a listener, so it never gets a second owner.
static STDIN_TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes ownership of the listening socket on fd 0.
fn take_stdin_listener() -> io::Result<Listener> {
    if !stdin_is_listener() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "fd 0 is not a listening socket",
        ));
    }
    let family = socket_family(0)?;
    if STDIN_TAKEN.swap(true, Ordering::SeqCst) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the listening socket on fd 0 is already being served",
        ));
    }
    // SAFETY (both arms): fd 0 is open and is a listening socket of the matched family
    // (checked above), and the flag above makes this the only place that ever takes it:
    // in FastCGI mode nothing else in the process reads stdin. The listener becomes its
    // sole owner.
    match family {
        libc::AF_UNIX => Ok(Listener::Unix(unsafe { UnixListener::from_raw_fd(0) })),
        libc::AF_INET | libc::AF_INET6 => Ok(Listener::Tcp(unsafe { TcpListener::from_raw_fd(0) })),
        other => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("the listening socket on fd 0 has address family {other}, not unix or TCP"),
        )),
    }
}

/// Serves FastCGI on the listening socket on fd 0 until accepting fails for good (the
/// socket was closed under us). Call it only when [`stdin_is_listener`] said yes; it returns
/// an error at once otherwise.
pub fn serve_stdin(handler: Handler, limits: &ResponderLimits) -> io::Result<()> {
    let listener = take_stdin_listener()?;
    let allowed = web_server_addrs(std::env::var(WEB_SERVER_ADDRS_ENV).ok().as_deref());
    serve(&listener, handler, limits, allowed.as_deref())
}

/// Parses `FCGI_WEB_SERVER_ADDRS`. Unset or blank means any peer may connect. Entries that
/// are not IP addresses are logged and skipped; a list in which nothing is valid admits
/// nobody, because the operator clearly meant to restrict access.
fn web_server_addrs(raw: Option<&str>) -> Option<Vec<IpAddr>> {
    let raw = raw.map(str::trim).filter(|r| !r.is_empty())?;
    let mut out = Vec::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match entry.parse::<IpAddr>() {
            Ok(ip) => out.push(ip.to_canonical()),
            Err(_) => tracing::warn!(entry, "{WEB_SERVER_ADDRS_ENV}: not an IP address, ignored"),
        }
    }
    Some(out)
}

/// Accepts connections while a slot is free and hands each to a worker thread of its own.
fn serve(
    listener: &Listener,
    handler: Handler,
    limits: &ResponderLimits,
    allowed: Option<&[IpAddr]>,
) -> io::Result<()> {
    // A process manager may hand us a non-blocking socket; the accept loop wants to block.
    let _ = match listener {
        Listener::Unix(l) => l.set_nonblocking(false),
        Listener::Tcp(l) => l.set_nonblocking(false),
    };
    tracing::info!(max_conns = limits.max_conns, "serving FastCGI on fd 0");
    let slots = Arc::new(Slots::new(limits.max_conns));
    let workers = Workers::new(handler, limits.clone());
    loop {
        let stream = match accept(listener) {
            Ok(s) => s,
            Err(e) if is_fatal_accept_error(&e) => return Err(e),
            Err(e) => {
                // A signal or a peer that gave up while queued needs nothing. Anything else
                // (out of descriptors or memory, a network error Linux reports on accept)
                // passes: wait a little instead of spinning on the same error.
                if !matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) {
                    tracing::warn!(error = %e, "cannot accept a connection now");
                    thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
        };
        if let (Stream::Tcp(s), Some(allowed)) = (&stream, allowed) {
            let permitted = s
                .peer_addr()
                .is_ok_and(|p| allowed.contains(&p.ip().to_canonical()));
            if !permitted {
                // The peer's address is not logged: it need not be a web server's.
                tracing::warn!("refused a connection from a peer not in {WEB_SERVER_ADDRS_ENV}");
                continue;
            }
        }
        let slot = Arc::new(Slots::admit(&slots));
        Workers::dispatch(&workers, Job { stream, slot });
    }
}

fn accept(listener: &Listener) -> io::Result<Stream> {
    match listener {
        Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
        Listener::Tcp(l) => l.accept().map(|(s, _)| {
            // Answers are written in one piece; Nagle would only delay the next one on a
            // kept-open connection.
            let _ = s.set_nodelay(true);
            Stream::Tcp(s)
        }),
    }
}

/// Errors that say the listening socket itself is gone or unusable; every other accept
/// error concerns one connection or a passing shortage (accept(2): "Linux accept() passes
/// already-pending network errors on the new socket as an error code"), and must not end
/// the responder.
fn is_fatal_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF | libc::ENOTSOCK | libc::EINVAL | libc::EFAULT)
    )
}

/// An accepted connection with its place among the slots, waiting for a worker.
struct Job {
    stream: Stream,
    slot: Arc<Slot>,
}

/// How long a worker thread without a connection stays for the next one before it ends.
const WORKER_IDLE: Duration = Duration::from_secs(60);

/// The threads that serve connections, one connection per thread at a time. A thread is
/// kept for the next connection rather than started afresh: a fresh thread costs a
/// request about 0.4 ms (measured with the CAPTCHA handler: its memory is cold), a third
/// of what the whole request takes. There are never more busy workers than slots; a
/// new worker is started whenever no idle one is left for a waiting connection, so a
/// connection never queues behind another one.
struct Workers {
    handler: Handler,
    limits: ResponderLimits,
    state: Mutex<WorkerState>,
    ready: Condvar,
}

#[derive(Default)]
struct WorkerState {
    jobs: std::collections::VecDeque<Job>,
    /// Workers waiting for a job.
    idle: usize,
}

impl Workers {
    fn new(handler: Handler, limits: ResponderLimits) -> Arc<Workers> {
        Arc::new(Workers {
            handler,
            limits,
            state: Mutex::new(WorkerState::default()),
            ready: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, WorkerState> {
        // A queue and a counter stay consistent under every panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `job` to an idle worker, or to a new one when every idle worker already has a
    /// job waiting for it.
    fn dispatch(this: &Arc<Workers>, job: Job) {
        let mut st = this.lock();
        st.jobs.push_back(job);
        if st.jobs.len() <= st.idle {
            this.ready.notify_one();
            return;
        }
        drop(st);
        let me = Arc::clone(this);
        let spawned = thread::Builder::new()
            .name("fcgi-conn".into())
            .stack_size(CONN_STACK)
            .spawn(move || me.work());
        if let Err(e) = spawned {
            // Nobody will take the job: drop it, which closes the connection and frees its
            // slot. Idle workers, if any, keep serving the rest.
            tracing::error!(error = %e, "cannot start a thread for a FastCGI connection");
            let mut st = this.lock();
            if st.jobs.len() > st.idle {
                drop(st.jobs.pop_back());
            }
        }
    }

    /// A worker: serves jobs until none came for [`WORKER_IDLE`], or until a connection
    /// panicked (its thread-locals may be half-done, so the thread ends with it).
    fn work(&self) {
        loop {
            let job = {
                let mut st = self.lock();
                loop {
                    if let Some(job) = st.jobs.pop_front() {
                        break job;
                    }
                    st.idle += 1;
                    let (next, waited) = self
                        .ready
                        .wait_timeout(st, WORKER_IDLE)
                        .unwrap_or_else(|p| p.into_inner());
                    st = next;
                    st.idle -= 1;
                    if waited.timed_out() && st.jobs.is_empty() {
                        return;
                    }
                }
            };
            if !run_connection(job, self.handler, &self.limits) {
                return;
            }
        }
    }
}

/// Serves one connection; the last line of defence against a panic in a handler. Every
/// profile unwinds (the release profile says so explicitly), so a panic closes only this
/// connection and the requests in flight beside it are answered; the real defence is still
/// code that cannot panic on input. Returns false after a
/// panic: the worker then ends, so a thread-local left half-done by the panic (the atomic
/// writer's deferred folder syncs) is never seen by another request.
fn run_connection(job: Job, handler: Handler, limits: &ResponderLimits) -> bool {
    let Job { stream, slot } = job;
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        serve_connection(stream, handler, limits, &slot)
    }));
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(ConnError::Io(e))) => {
            // Timeouts, resets and early closes are the peer's business, not an error here.
            tracing::debug!(error = %e, "FastCGI connection ended");
        }
        Ok(Err(ConnError::Malformed(why))) => {
            tracing::warn!(why, "closed a malformed FastCGI connection");
        }
        Err(_) => {
            tracing::error!("a FastCGI request panicked; only its connection was closed");
            return false;
        }
    }
    true
}

/// Why a connection ended early.
#[derive(Debug)]
enum ConnError {
    /// Reading or writing failed: the peer closed, reset or stalled past a timeout.
    Io(io::Error),
    /// The peer sent something the protocol does not allow.
    Malformed(&'static str),
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        ConnError::Io(e)
    }
}

/// A connected socket of either family.
#[derive(Debug)]
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
        }
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(t),
            Stream::Tcp(s) => s.set_write_timeout(t),
        }
    }
    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }
    fn shutdown(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

/// A stream whose reads fail once a deadline has passed, so that a peer trickling one byte
/// per timeout period still cannot hold a thread for longer than the phase allows.
struct DeadlineStream {
    stream: Stream,
    /// Reads fail with `TimedOut` from this instant on.
    read_deadline: Instant,
    /// Writes fail with `TimedOut` from this instant on.
    write_deadline: Instant,
    /// The bound on one read.
    read_timeout: Duration,
    /// The read timeout currently set on the socket, to skip redundant system calls.
    applied: Option<Duration>,
}

impl DeadlineStream {
    fn new(stream: Stream, limits: &ResponderLimits) -> io::Result<DeadlineStream> {
        stream.set_write_timeout(Some(limits.write_timeout.max(Duration::from_millis(1))))?;
        let now = Instant::now();
        Ok(DeadlineStream {
            stream,
            read_deadline: now + limits.idle_timeout,
            write_deadline: now + limits.write_timeout,
            read_timeout: limits.read_timeout.max(Duration::from_millis(1)),
            applied: None,
        })
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} deadline passed"))
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.read_deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out("read"));
        }
        // Whole seconds, rounded up: the socket timeout then changes at most once a second
        // near the deadline instead of on every read, and the check above still ends the
        // phase on time.
        let t = self
            .read_timeout
            .min(Duration::from_secs(left.as_secs().saturating_add(1)));
        if self.applied != Some(t) {
            self.stream.set_read_timeout(Some(t))?;
            self.applied = Some(t);
        }
        self.stream.read(buf)
    }
}

impl Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if Instant::now() >= self.write_deadline {
            return Err(timed_out("write"));
        }
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// A record header (FastCGI spec, section 3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    kind: u8,
    id: u16,
    content_len: u16,
    padding_len: u8,
}

fn parse_header(b: [u8; HEADER_LEN]) -> Result<Header, ConnError> {
    let [version, kind, id1, id0, len1, len0, padding_len, _reserved] = b;
    if version != VERSION_1 {
        return Err(ConnError::Malformed("not a FastCGI version 1 record"));
    }
    Ok(Header {
        kind,
        id: u16::from_be_bytes([id1, id0]),
        content_len: u16::from_be_bytes([len1, len0]),
        padding_len,
    })
}

/// Reads until `buf` is full or the peer closed; returns how many bytes arrived.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while let Some(rest) = buf.get_mut(got..).filter(|r| !r.is_empty()) {
        match r.read(rest) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads one record into `content`. `Ok(None)` means the peer closed cleanly between
/// records; a close inside a record is an error.
fn read_record(r: &mut impl Read, content: &mut Vec<u8>) -> Result<Option<Header>, ConnError> {
    let mut head = [0u8; HEADER_LEN];
    match fill(r, &mut head)? {
        0 => return Ok(None),
        HEADER_LEN => {}
        _ => {
            return Err(ConnError::Malformed(
                "connection closed inside a record header",
            ));
        }
    }
    let h = parse_header(head)?;
    content.clear();
    content.resize(usize::from(h.content_len), 0);
    let mut padding = [0u8; 255];
    let padding = padding
        .get_mut(..usize::from(h.padding_len))
        .ok_or(ConnError::Malformed("padding longer than 255 bytes"))?;
    for part in [content.as_mut_slice(), padding] {
        if fill(r, part)? != part.len() {
            return Err(ConnError::Malformed("connection closed inside a record"));
        }
    }
    Ok(Some(h))
}

/// Appends one record; `content` longer than a record can hold is cut (callers split first).
fn push_record(out: &mut Vec<u8>, kind: u8, id: u16, content: &[u8]) {
    let content = content.get(..MAX_CONTENT).unwrap_or(content);
    let len = u16::try_from(content.len()).unwrap_or(u16::MAX);
    let [id1, id0] = id.to_be_bytes();
    let [len1, len0] = len.to_be_bytes();
    out.extend_from_slice(&[VERSION_1, kind, id1, id0, len1, len0, 0, 0]);
    out.extend_from_slice(content);
}

fn push_end_request(out: &mut Vec<u8>, id: u16, app_status: u32, protocol_status: u8) {
    let [a3, a2, a1, a0] = app_status.to_be_bytes();
    push_record(
        out,
        END_REQUEST,
        id,
        &[a3, a2, a1, a0, protocol_status, 0, 0, 0],
    );
}

/// Why a name-value block could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PairError {
    /// A length field is cut off by the end of the block.
    TruncatedLength,
    /// A name or value is longer than what is left of the block.
    LengthBeyondBlock,
}

/// Reads one name or value length: one byte below 128, else four bytes with the top bit
/// set (FastCGI spec, section 3.4).
fn read_len(buf: &[u8]) -> Result<(usize, &[u8]), PairError> {
    match buf {
        [b0, rest @ ..] if b0 & 0x80 == 0 => Ok((usize::from(*b0), rest)),
        [b0, b1, b2, b3, rest @ ..] => {
            let n = u32::from_be_bytes([b0 & 0x7f, *b1, *b2, *b3]);
            // On a 16-bit target the length could not be addressed; it is beyond any block.
            let n = usize::try_from(n).map_err(|_| PairError::LengthBeyondBlock)?;
            Ok((n, rest))
        }
        _ => Err(PairError::TruncatedLength),
    }
}

/// One decoded name and value, borrowed from the block they came in.
type Pair<'a> = (&'a [u8], &'a [u8]);

/// Decodes a block of name-value pairs. Every length is checked against what is left of
/// the block before it is used, so no input can make this read out of bounds or allocate.
fn parse_pairs(mut buf: &[u8]) -> Result<Vec<Pair<'_>>, PairError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let (name_len, rest) = read_len(buf)?;
        let (value_len, rest) = read_len(rest)?;
        let (name, rest) = rest
            .split_at_checked(name_len)
            .ok_or(PairError::LengthBeyondBlock)?;
        let (value, rest) = rest
            .split_at_checked(value_len)
            .ok_or(PairError::LengthBeyondBlock)?;
        out.push((name, value));
        buf = rest;
    }
    Ok(out)
}

/// Appends one name-value pair. Lengths above the format's 31 bits cannot occur for what
/// we encode (our own short names and numbers); such a pair would be skipped.
fn push_pair(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    fn len_bytes(n: usize) -> Option<Vec<u8>> {
        if n < 0x80 {
            return u8::try_from(n).ok().map(|b| vec![b]);
        }
        let n = u32::try_from(n).ok().filter(|n| *n <= 0x7fff_ffff)?;
        Some((n | 0x8000_0000).to_be_bytes().to_vec())
    }
    if let (Some(n), Some(v)) = (len_bytes(name.len()), len_bytes(value.len())) {
        out.extend_from_slice(&n);
        out.extend_from_slice(&v);
        out.extend_from_slice(name);
        out.extend_from_slice(value);
    }
}

/// The answer to FCGI_GET_VALUES: the variables we know, in the order asked; unknown names
/// are left out, as the spec says.
fn get_values_result(query: &[u8], limits: &ResponderLimits) -> Result<Vec<u8>, ConnError> {
    let asked = parse_pairs(query).map_err(|_| ConnError::Malformed("bad FCGI_GET_VALUES"))?;
    let conns = limits.max_conns.to_string();
    let mut out = Vec::new();
    for (name, _) in asked {
        let value = match name {
            b"FCGI_MAX_CONNS" | b"FCGI_MAX_REQS" => conns.as_bytes(),
            // One request per connection at a time: we never multiplex.
            b"FCGI_MPXS_CONNS" => b"0".as_slice(),
            _ => continue,
        };
        push_pair(&mut out, name, value);
    }
    if out.len() > MAX_CONTENT {
        return Err(ConnError::Malformed("FCGI_GET_VALUES asks for too much"));
    }
    Ok(out)
}

/// The byte stream a connection's records travel on, and what differs between serving a
/// socket and replaying bytes in memory: the socket's deadlines, its slot among the
/// connections and the watchdog ([`Socket`]); nothing of that under the fuzzer
/// ([`MemoryWire`], see [`fuzz_connection`]). The request loop, [`serve_requests`], is
/// the same for both.
trait Wire: Read + Write {
    /// Starts the time bound of the next answer's write.
    fn arm_write(&mut self, timeout: Duration);
    /// The connection now waits for a request, for at most `idle`.
    fn waiting(&mut self, idle: Duration);
    /// The wait ended (a request began, or the peer left); the request's reads must end
    /// within `request`.
    fn busy(&mut self, request: Duration);
    /// Runs `handler` for request `id`; `None` when something else already answered it
    /// (the watchdog, after the request overran its deadline) and closed the connection.
    fn handle(
        &mut self,
        id: u16,
        deadline: &crate::deadline::Guard,
        run: impl FnOnce() -> Response,
    ) -> Option<Response>;
}

/// A served socket: the stream with its deadlines, the connection's slot, and a second
/// handle on the socket by which the accept loop may close it while it waits for a request.
struct Socket<'s> {
    stream: DeadlineStream,
    slot: &'s Arc<Slot>,
    handle: Option<Stream>,
}

impl Read for Socket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for Socket<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

impl Wire for Socket<'_> {
    fn arm_write(&mut self, timeout: Duration) {
        self.stream.write_deadline = Instant::now() + timeout;
    }

    fn waiting(&mut self, idle: Duration) {
        self.stream.read_deadline = Instant::now() + idle;
        if let Some(h) = self.handle.take() {
            self.slot.set_idle(h);
        }
    }

    fn busy(&mut self, request: Duration) {
        self.handle = self.slot.set_busy();
        self.stream.read_deadline = Instant::now() + request;
    }

    fn handle(
        &mut self,
        id: u16,
        deadline: &crate::deadline::Guard,
        run: impl FnOnce() -> Response,
    ) -> Option<Response> {
        let watch = Watch::start(&self.stream.stream, id, self.slot, deadline);
        let resp = run();
        match &watch {
            Some(w) if !w.finish() => None,
            _ => Some(resp),
        }
    }
}

/// One connection's record reader over its wire.
struct ConnReader<'a, S: Wire> {
    r: BufReader<S>,
    content: Vec<u8>,
    limits: &'a ResponderLimits,
    /// Records since the last request began that started nothing.
    strays: usize,
}

/// A BEGIN_REQUEST for the Responder role.
#[derive(Debug, Clone, Copy)]
struct Begin {
    id: u16,
    keep_conn: bool,
}

/// What arrived for one request.
enum Incoming {
    /// The web server aborted the request before it was complete.
    Aborted,
    /// PARAMS exceeded the bound; the rest was read and dropped.
    ParamsTooLarge,
    /// The complete request.
    Complete {
        params: Vec<u8>,
        stdin: Vec<u8>,
        stdin_overflow: bool,
    },
}

impl<'a, S: Wire> ConnReader<'a, S> {
    fn new(wire: S, limits: &'a ResponderLimits) -> Self {
        ConnReader {
            r: BufReader::with_capacity(16 * 1024, wire),
            content: Vec::new(),
            limits,
            strays: 0,
        }
    }

    fn write_now(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        let wire = self.r.get_mut();
        wire.arm_write(self.limits.write_timeout);
        wire.write_all(bytes)?;
        wire.flush()?;
        Ok(())
    }

    fn next_record(&mut self) -> Result<Option<Header>, ConnError> {
        read_record(&mut self.r, &mut self.content)
    }

    fn stray(&mut self) -> Result<(), ConnError> {
        self.strays += 1;
        if self.strays > self.limits.max_stray_records {
            return Err(ConnError::Malformed(
                "too many records that start no request",
            ));
        }
        Ok(())
    }

    /// Answers a management record (request id 0).
    fn management(&mut self, h: Header) -> Result<(), ConnError> {
        self.stray()?;
        let mut out = Vec::new();
        if h.kind == GET_VALUES {
            let result = get_values_result(&self.content, self.limits)?;
            push_record(&mut out, GET_VALUES_RESULT, 0, &result);
        } else {
            push_record(&mut out, UNKNOWN_TYPE, 0, &[h.kind, 0, 0, 0, 0, 0, 0, 0]);
        }
        self.write_now(&out)
    }

    /// Waits for the next Responder request. `Ok(None)`: the peer closed, or refused a
    /// role without keeping the connection.
    fn next_begin(&mut self) -> Result<Option<Begin>, ConnError> {
        loop {
            let Some(h) = self.next_record()? else {
                return Ok(None);
            };
            if h.id == 0 {
                self.management(h)?;
                continue;
            }
            if h.kind != BEGIN_REQUEST {
                // Leftovers of an aborted or refused request, or records for a request that
                // never began: the spec says to ignore records for inactive ids.
                self.stray()?;
                continue;
            }
            let (role, keep_conn) = parse_begin(&self.content)?;
            if role == ROLE_RESPONDER {
                return Ok(Some(Begin {
                    id: h.id,
                    keep_conn,
                }));
            }
            self.stray()?;
            let mut out = Vec::new();
            push_end_request(&mut out, h.id, 0, UNKNOWN_ROLE);
            self.write_now(&out)?;
            if !keep_conn {
                return Ok(None);
            }
        }
    }

    /// Reads the PARAMS and STDIN streams of request `b` until both ended.
    fn read_request(&mut self, b: Begin) -> Result<Incoming, ConnError> {
        let mut params = Vec::new();
        let mut stdin = Vec::new();
        let (mut params_done, mut stdin_done) = (false, false);
        let (mut params_overflow, mut stdin_overflow) = (false, false);
        let mut discarded: u64 = 0;
        while !(params_done && stdin_done) {
            let h = self
                .next_record()?
                .ok_or(ConnError::Malformed("connection closed inside a request"))?;
            if h.id == 0 {
                self.management(h)?;
                continue;
            }
            if h.kind == BEGIN_REQUEST {
                if h.id == b.id {
                    return Err(ConnError::Malformed("BEGIN_REQUEST twice for one request"));
                }
                // A second request while one is running: we never multiplex.
                self.stray()?;
                let mut out = Vec::new();
                push_end_request(&mut out, h.id, 0, CANT_MPX_CONN);
                self.write_now(&out)?;
                continue;
            }
            if h.id != b.id {
                self.stray()?;
                continue;
            }
            let (done, overflow, buf, max) = match h.kind {
                ABORT_REQUEST => return Ok(Incoming::Aborted),
                PARAMS => (
                    &mut params_done,
                    &mut params_overflow,
                    &mut params,
                    self.limits.max_params_bytes,
                ),
                STDIN => (
                    &mut stdin_done,
                    &mut stdin_overflow,
                    &mut stdin,
                    self.limits.max_stdin_bytes,
                ),
                // DATA belongs to the Filter role, the rest never flows to an application.
                _ => {
                    self.stray()?;
                    continue;
                }
            };
            if *done {
                return Err(ConnError::Malformed(
                    "stream record after the end of its stream",
                ));
            }
            if self.content.is_empty() {
                *done = true;
            } else if *overflow || buf.len().saturating_add(self.content.len()) > max {
                *overflow = true;
                discarded = discarded.saturating_add(self.content.len() as u64);
                if discarded > self.limits.max_discard_bytes {
                    return Err(ConnError::Malformed("request far beyond the size limits"));
                }
            } else {
                buf.extend_from_slice(&self.content);
            }
        }
        if params_overflow {
            return Ok(Incoming::ParamsTooLarge);
        }
        Ok(Incoming::Complete {
            params,
            stdin,
            stdin_overflow,
        })
    }

    /// Writes an answer as STDOUT records, the end of STDOUT and END_REQUEST, in one write.
    fn answer(&mut self, id: u16, cgi: &[u8]) -> Result<(), ConnError> {
        self.write_now(&answer_records(id, cgi))
    }
}

/// A complete answer to request `id`: the CGI output as STDOUT records, the end of STDOUT
/// and END_REQUEST, ready to be written in one piece.
fn answer_records(id: u16, cgi: &[u8]) -> Vec<u8> {
    let records = cgi.len() / MAX_CONTENT + 3;
    let mut out = Vec::with_capacity(cgi.len() + records * HEADER_LEN + HEADER_LEN);
    for chunk in cgi.chunks(MAX_CONTENT) {
        push_record(&mut out, STDOUT, id, chunk);
    }
    push_record(&mut out, STDOUT, id, &[]);
    push_end_request(&mut out, id, 0, REQUEST_COMPLETE);
    out
}

fn parse_begin(content: &[u8]) -> Result<(u16, bool), ConnError> {
    match content {
        [r1, r0, flags, ..] if content.len() >= 8 => {
            Ok((u16::from_be_bytes([*r1, *r0]), flags & FLAG_KEEP_CONN != 0))
        }
        _ => Err(ConnError::Malformed(
            "BEGIN_REQUEST body shorter than 8 bytes",
        )),
    }
}

/// The request's variables from its PARAMS block. Names and values that are not UTF-8 are
/// replaced lossily, as plain CGI does with the process environment.
fn params_to_vars(block: &[u8]) -> Result<HashMap<String, String>, ConnError> {
    let pairs = parse_pairs(block).map_err(|e| match e {
        PairError::TruncatedLength => ConnError::Malformed("PARAMS: truncated length"),
        PairError::LengthBeyondBlock => ConnError::Malformed("PARAMS: length beyond the block"),
    })?;
    Ok(pairs
        .into_iter()
        .filter(|(name, _)| !name.is_empty())
        .map(|(n, v)| {
            (
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect())
}

/// The body a handler reads: the buffered STDIN, then an error if more was sent than we
/// keep. A handler reads at most `CONTENT_LENGTH` bytes and refuses lengths above its own
/// limit (413) before reading, so it only meets the error if the web server sent more than
/// it announced.
struct Body {
    data: Vec<u8>,
    pos: usize,
    overflow: bool,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = self.data.get(self.pos..).unwrap_or(&[]);
        if rest.is_empty() && self.overflow {
            return Err(io::Error::other("request body beyond the FastCGI buffer"));
        }
        let n = rest.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), rest.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.pos += n;
        Ok(n)
    }
}

fn serve_connection(
    stream: Stream,
    handler: Handler,
    limits: &ResponderLimits,
    slot: &Arc<Slot>,
) -> Result<(), ConnError> {
    let stream = DeadlineStream::new(stream, limits)?;
    let handle = stream.stream.try_clone().ok();
    let socket = Socket {
        stream,
        slot,
        handle,
    };
    serve_requests(&mut ConnReader::new(socket, limits), handler)
}

/// The request loop of one connection, over a socket in service and over memory under the
/// fuzzer alike: wait for a Responder request, read it whole, answer it (or refuse it), and
/// go on while the web server keeps the connection.
fn serve_requests<S: Wire>(
    conn: &mut ConnReader<'_, S>,
    handler: Handler,
) -> Result<(), ConnError> {
    let limits = conn.limits;
    loop {
        conn.r.get_mut().waiting(limits.idle_timeout);
        let begin = conn.next_begin();
        conn.r.get_mut().busy(limits.request_deadline);
        let Some(b) = begin? else {
            return Ok(());
        };
        conn.strays = 0;
        match conn.read_request(b)? {
            Incoming::Aborted => {
                let mut out = Vec::new();
                push_end_request(&mut out, b.id, 0, REQUEST_COMPLETE);
                conn.write_now(&out)?;
            }
            Incoming::ParamsTooLarge => {
                tracing::warn!(
                    limit = limits.max_params_bytes,
                    "FastCGI request with too many parameters refused"
                );
                let resp = Response::text(400, "Request header fields too large.\n".into());
                conn.answer(b.id, &resp.to_cgi())?;
            }
            Incoming::Complete {
                params,
                stdin,
                stdin_overflow,
            } => {
                let req = Request::new(params_to_vars(&params)?);
                drop(params);
                let mut body = Body {
                    data: stdin,
                    pos: 0,
                    overflow: stdin_overflow,
                };
                let deadline = crate::deadline::begin();
                let resp = conn
                    .r
                    .get_mut()
                    .handle(b.id, &deadline, || handler(req, &mut body));
                drop(body);
                drop(deadline);
                // `None`: the watchdog answered for this request and closed the connection.
                let resp = resp.ok_or_else(|| ConnError::Io(timed_out("request")))?;
                conn.answer(b.id, &resp.to_cgi())?;
                crate::handler::run_after_answer();
            }
        }
        if !b.keep_conn {
            return Ok(());
        }
    }
}

/// A connection's bytes in memory: what the peer sent, and what we wrote back.
struct MemoryWire<'a> {
    input: &'a [u8],
    output: Vec<u8>,
}

impl Read for MemoryWire<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for MemoryWire<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Wire for MemoryWire<'_> {
    fn arm_write(&mut self, _timeout: Duration) {}
    fn waiting(&mut self, _idle: Duration) {}
    fn busy(&mut self, _request: Duration) {}
    fn handle(
        &mut self,
        _id: u16,
        _deadline: &crate::deadline::Guard,
        run: impl FnOnce() -> Response,
    ) -> Option<Response> {
        Some(run())
    }
}

/// For the fuzzer (fuzz/): serves `input` as one connection's bytes through the real
/// request loop ([`serve_requests`]: records, management records, PARAMS and STDIN streams,
/// name-value pairs, answers) with `handler` answering each complete request; only the
/// wire differs from service (no socket, so no deadlines, slot or watchdog). Returns what
/// was written back, and the reason the connection was closed for, if it was.
#[doc(hidden)]
pub fn fuzz_connection(
    input: &[u8],
    handler: Handler,
    limits: &ResponderLimits,
) -> (Vec<u8>, Option<String>) {
    let wire = MemoryWire {
        input,
        output: Vec::new(),
    };
    let mut conn = ConnReader::new(wire, limits);
    let end = serve_requests(&mut conn, handler).err().map(|e| match e {
        ConnError::Io(e) => e.to_string(),
        ConnError::Malformed(m) => m.to_string(),
    });
    (conn.r.into_inner().output, end)
}

/// How long a connection must have waited for a request before it may be closed to make
/// room for a new one.
const MIN_IDLE_BEFORE_CLOSE: Duration = Duration::from_secs(1);

/// The connection cap, and the connections waiting for a request that may be closed to make
/// room.
struct Slots {
    max: usize,
    state: Mutex<SlotState>,
    freed: Condvar,
}

#[derive(Default)]
struct SlotState {
    active: usize,
    next_id: u64,
    /// Connections waiting for their next request, with a handle to close them by.
    idle: Vec<Idle>,
}

struct Idle {
    id: u64,
    since: Instant,
    handle: Stream,
}

/// One admitted connection; dropping it frees its place (or the watchdog frees it early,
/// for a request stuck past its deadline).
struct Slot {
    slots: Arc<Slots>,
    id: u64,
    freed: AtomicBool,
}

impl Slots {
    fn new(max: usize) -> Slots {
        Slots {
            max: max.max(1),
            state: Mutex::new(SlotState::default()),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // The state stays consistent under every panic (plain counters and a list), so a
        // poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a free place. While all are taken, the connection that has waited longest
    /// for a request is closed, once it has waited at least [`MIN_IDLE_BEFORE_CLOSE`]: a
    /// web server's pool of kept-open connections, or peers that connect and say nothing,
    /// must not starve new requests. (nginx retries a request that fails on a kept-open
    /// connection it just reused; a real web server sends its request within microseconds
    /// of connecting, so a fresh connection that waited this long is not about to.)
    fn admit(this: &Arc<Slots>) -> Slot {
        let mut st = this.lock();
        loop {
            if st.active < this.max {
                st.active += 1;
                st.next_id = st.next_id.wrapping_add(1);
                return Slot {
                    slots: Arc::clone(this),
                    id: st.next_id,
                    freed: AtomicBool::new(false),
                };
            }
            let oldest = st
                .idle
                .iter()
                .enumerate()
                .min_by_key(|(_, i)| i.since)
                .map(|(n, i)| (n, i.since.elapsed()));
            let wait = match oldest {
                Some((n, waited)) if waited >= MIN_IDLE_BEFORE_CLOSE => {
                    let victim = st.idle.swap_remove(n);
                    tracing::debug!("closing an idle FastCGI connection to make room");
                    let _ = victim.handle.shutdown();
                    Duration::from_millis(500)
                }
                Some((_, waited)) => MIN_IDLE_BEFORE_CLOSE.saturating_sub(waited),
                None => Duration::from_millis(500),
            };
            st = this
                .freed
                .wait_timeout(st, wait.max(Duration::from_millis(1)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Slot {
    /// Lists this connection as waiting for its next request, lending the registry a
    /// handle to close it by.
    fn set_idle(&self, handle: Stream) {
        let mut st = self.slots.lock();
        st.idle.push(Idle {
            id: self.id,
            since: Instant::now(),
            handle,
        });
        // The accept loop may be waiting for room that this connection can now give.
        self.slots.freed.notify_all();
    }

    /// Takes this connection off the idle list and returns the lent handle; `None` when the
    /// connection was closed to make room (its reads then fail and it ends).
    fn set_busy(&self) -> Option<Stream> {
        let mut st = self.slots.lock();
        let n = st.idle.iter().position(|i| i.id == self.id)?;
        Some(st.idle.swap_remove(n).handle)
    }
}

impl Slot {
    /// Gives the place back, once: on drop, or earlier from the watchdog.
    fn release(&self) {
        if self.freed.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut st = self.slots.lock();
        st.idle.retain(|i| i.id != self.id);
        st.active = st.active.saturating_sub(1);
        self.slots.freed.notify_all();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release();
    }
}

/// A request the watchdog keeps an eye on.
struct Watched {
    key: u64,
    /// When it overran: read from the deadline on every check, because the request's own
    /// config may set the limit after it was registered.
    deadline: crate::deadline::Overrun,
    request_id: u16,
    stream: Stream,
    slot: Arc<Slot>,
    saved: Arc<AtomicBool>,
    answered: Arc<AtomicBool>,
}

/// The responder's one watchdog thread and the requests it watches. A request that is still
/// running when it overran its deadline by the grace period (see `deadline`) gets
/// `handler::overrun_response` written for it, its connection is closed and its place among
/// the slots is freed, so the responder goes on serving others while that thread stays
/// stuck in its call. Every bounded step of a request ends at its deadline, so this only
/// fires for a call without a timeout of its own.
struct Watchdog {
    watched: Mutex<Vec<Watched>>,
    changed: Condvar,
    next_key: std::sync::atomic::AtomicU64,
}

static WATCHDOG: std::sync::OnceLock<Option<&'static Watchdog>> = std::sync::OnceLock::new();

impl Watchdog {
    /// The responder's watchdog, started on first use; `None` when no thread could be
    /// started (requests then run without one, bounded by their own steps).
    fn get() -> Option<&'static Watchdog> {
        *WATCHDOG.get_or_init(|| {
            let dog: &'static Watchdog = Box::leak(Box::new(Watchdog {
                watched: Mutex::new(Vec::new()),
                changed: Condvar::new(),
                next_key: std::sync::atomic::AtomicU64::new(0),
            }));
            match thread::Builder::new()
                .name("fcgi-watchdog".into())
                .stack_size(256 * 1024)
                .spawn(move || dog.run())
            {
                Ok(_) => Some(dog),
                Err(e) => {
                    tracing::warn!(error = %e, "no watchdog for FastCGI requests");
                    None
                }
            }
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Watched>> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self) {
        let mut list = self.lock();
        loop {
            let now = Instant::now();
            let (late, on_time): (Vec<Watched>, Vec<Watched>) = std::mem::take(&mut *list)
                .into_iter()
                .partition(|w| w.deadline.at() <= now);
            *list = on_time;
            if !late.is_empty() {
                drop(list);
                late.into_iter().for_each(Watchdog::answer);
                list = self.lock();
                continue;
            }
            // At most a second between checks: a limit set by a config is seen soon.
            let next = list.iter().map(|w| w.deadline.at()).min();
            let wait = next
                .map_or(Duration::from_secs(1), |d| d.saturating_duration_since(now))
                .min(Duration::from_secs(1));
            list = self
                .changed
                .wait_timeout(list, wait.max(Duration::from_millis(1)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn answer(w: Watched) {
        if w.answered.swap(true, Ordering::SeqCst) {
            return;
        }
        let saved = w.saved.load(Ordering::Relaxed);
        tracing::error!(
            limit_s = crate::deadline::limit().as_secs(),
            saved,
            "a FastCGI request overran its deadline; answered for it and closed its connection"
        );
        let out = answer_records(
            w.request_id,
            &crate::handler::overrun_response(saved).to_cgi(),
        );
        let mut stream = w.stream;
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = stream.write_all(&out);
        let _ = stream.shutdown();
        w.slot.release();
    }
}

/// A request's registration with the watchdog.
struct Watch {
    key: u64,
    answered: Arc<AtomicBool>,
}

impl Watch {
    /// Registers the request on `stream` with the watchdog; `None` without a watchdog or
    /// when the socket cannot be shared with it.
    fn start(
        stream: &Stream,
        request_id: u16,
        slot: &Arc<Slot>,
        deadline: &crate::deadline::Guard,
    ) -> Option<Watch> {
        let dog = Watchdog::get()?;
        let stream = stream.try_clone().ok()?;
        let key = dog.next_key.fetch_add(1, Ordering::Relaxed);
        let answered = Arc::new(AtomicBool::new(false));
        dog.lock().push(Watched {
            key,
            deadline: deadline.overrun(),
            request_id,
            stream,
            slot: Arc::clone(slot),
            saved: deadline.saved_flag(),
            answered: Arc::clone(&answered),
        });
        dog.changed.notify_one();
        Some(Watch { key, answered })
    }

    /// Ends the watch when the handler returned; false when the watchdog already answered.
    fn finish(&self) -> bool {
        !self.answered.swap(true, Ordering::SeqCst)
    }
}

impl Drop for Watch {
    /// Takes the request off the watchdog's list, also when its handler panicked: the
    /// list's handle on the socket must not keep a closed connection open.
    fn drop(&mut self) {
        self.answered.store(true, Ordering::SeqCst);
        if let Some(dog) = Watchdog::get() {
            dog.lock().retain(|w| w.key != self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, v) in list {
            push_pair(&mut out, n, v);
        }
        out
    }

    #[test]
    fn pairs_with_one_and_four_byte_lengths_round_trip() {
        let long = vec![b'x'; 300];
        let block = pairs(&[
            (b"REQUEST_METHOD", b"GET"),
            (b"HTTP_COOKIE", &long),
            (b"EMPTY", b""),
        ]);
        // The 300-byte value has a four-byte length with the top bit set.
        assert_eq!(&block[..2], &[14, 3]);
        let parsed = parse_pairs(&block).expect("valid block");
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[0], (&b"REQUEST_METHOD"[..], &b"GET"[..]));
        assert_eq!(parsed[1].1.len(), 300);
        assert_eq!(parsed[2], (&b"EMPTY"[..], &b""[..]));
        // A four-byte length may also encode a small number.
        let explicit = [0x80, 0, 0, 1, 1, b'A', b'b'];
        assert_eq!(parse_pairs(&explicit), Ok(vec![(&b"A"[..], &b"b"[..])]));
    }

    #[test]
    fn truncated_or_oversized_pairs_are_errors_not_panics() {
        // A four-byte length cut off after two bytes.
        assert_eq!(parse_pairs(&[0x80, 0]), Err(PairError::TruncatedLength));
        // A name length but no value length.
        assert_eq!(parse_pairs(&[3]), Err(PairError::TruncatedLength));
        // Lengths that claim more than the block holds, up to the maximum 2^31 - 1.
        assert_eq!(
            parse_pairs(&[5, 0, b'a']),
            Err(PairError::LengthBeyondBlock)
        );
        assert_eq!(
            parse_pairs(&[0xff, 0xff, 0xff, 0xff, 0, b'a']),
            Err(PairError::LengthBeyondBlock)
        );
        assert_eq!(
            parse_pairs(&[1, 0xff, 0xff, 0xff, 0xff, b'a']),
            Err(PairError::LengthBeyondBlock)
        );
        // Every prefix of a valid block either parses or fails; none panics.
        let block = pairs(&[(b"A", &[b'v'; 200][..]), (b"B", b"c")]);
        for end in 0..block.len() {
            let _ = parse_pairs(&block[..end]);
        }
        assert_eq!(parse_pairs(&[]), Ok(vec![]));
    }

    #[test]
    fn headers_and_records_are_checked() {
        let mut content = Vec::new();
        // A clean close between records.
        assert!(matches!(read_record(&mut &b""[..], &mut content), Ok(None)));
        // A truncated header, a wrong version, a body shorter than announced, and padding
        // that is missing.
        assert!(read_record(&mut &[1u8, 1, 0][..], &mut content).is_err());
        assert!(read_record(&mut &[2u8, 1, 0, 1, 0, 0, 0, 0][..], &mut content).is_err());
        assert!(
            read_record(
                &mut &[1u8, 4, 0, 1, 0xff, 0xff, 0, 0, 1, 2][..],
                &mut content
            )
            .is_err()
        );
        assert!(read_record(&mut &[1u8, 4, 0, 1, 0, 1, 9, 0, b'x'][..], &mut content).is_err());
        // A good record with padding.
        let rec = [1u8, 5, 0, 7, 0, 2, 3, 0, b'h', b'i', 0, 0, 0];
        let h = read_record(&mut &rec[..], &mut content)
            .expect("valid")
            .expect("a record");
        assert_eq!(
            (h.kind, h.id, h.content_len, h.padding_len),
            (STDIN, 7, 2, 3)
        );
        assert_eq!(content, b"hi");
        // BEGIN_REQUEST bodies shorter than 8 bytes are refused.
        assert!(parse_begin(&[0, 1, 1]).is_err());
        assert_eq!(parse_begin(&[0, 1, 1, 0, 0, 0, 0, 0]).ok(), Some((1, true)));
    }

    #[test]
    fn long_answers_are_split_into_full_records() {
        let mut out = Vec::new();
        let body = vec![7u8; MAX_CONTENT + 10];
        for chunk in body.chunks(MAX_CONTENT) {
            push_record(&mut out, STDOUT, 1, chunk);
        }
        let mut r = &out[..];
        let mut content = Vec::new();
        let a = read_record(&mut r, &mut content).expect("ok").expect("one");
        let b = read_record(&mut r, &mut content).expect("ok").expect("two");
        assert_eq!((a.content_len, b.content_len), (65535, 10));
        assert!(read_record(&mut r, &mut content).expect("ok").is_none());
    }

    #[test]
    fn web_server_addrs_are_parsed_leniently_but_never_open_up() {
        assert_eq!(web_server_addrs(None), None);
        assert_eq!(web_server_addrs(Some("  ")), None);
        let list = web_server_addrs(Some("127.0.0.1, ::ffff:10.0.0.1,bogus")).expect("set");
        assert_eq!(
            list,
            vec![
                "127.0.0.1".parse::<IpAddr>().expect("ip"),
                "10.0.0.1".parse::<IpAddr>().expect("ip")
            ]
        );
        // Nothing valid: nobody is admitted, rather than everybody.
        assert_eq!(web_server_addrs(Some("bogus")), Some(vec![]));
    }

    #[test]
    fn a_pipe_or_a_connected_socket_is_not_a_listener() {
        let (a, _b) = UnixStream::pair().expect("pair");
        use std::os::fd::AsRawFd;
        assert!(!is_listening_socket(a.as_raw_fd()));
        let dir = tempfile::tempdir().expect("tempdir");
        let l = UnixListener::bind(dir.path().join("s")).expect("bind");
        assert!(is_listening_socket(l.as_raw_fd()));
        assert_eq!(socket_family(l.as_raw_fd()).ok(), Some(libc::AF_UNIX));
        let t = TcpListener::bind("127.0.0.1:0").expect("bind");
        assert!(is_listening_socket(t.as_raw_fd()));
        assert!(!is_listening_socket(-1));
    }

    // In-process protocol tests: a connection served by `serve_connection` on one end of a
    // socket pair, a hand-written client on the other.

    fn echo(req: Request, body: &mut dyn Read) -> Response {
        let mut b = Vec::new();
        let read = body.read_to_end(&mut b);
        let text = format!(
            "root={} addr={} body={} read_ok={}",
            req.var("FORMWARDEN_ROOT").unwrap_or("-"),
            req.var("REMOTE_ADDR").unwrap_or("-"),
            String::from_utf8_lossy(&b),
            read.is_ok()
        );
        Response::bytes(200, "text/plain", text.into_bytes())
    }

    fn big(_req: Request, _body: &mut dyn Read) -> Response {
        Response::bytes(200, "application/octet-stream", vec![b'z'; 200_000])
    }

    fn start(
        handler: Handler,
        limits: ResponderLimits,
    ) -> (UnixStream, thread::JoinHandle<Result<(), ConnError>>) {
        let (client, server) = UnixStream::pair().expect("pair");
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let slots = Arc::new(Slots::new(4));
        let t = thread::spawn(move || {
            let slot = Arc::new(Slots::admit(&slots));
            serve_connection(Stream::Unix(server), handler, &limits, &slot)
        });
        (client, t)
    }

    fn rec(kind: u8, id: u16, content: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        push_record(&mut out, kind, id, content);
        out
    }

    fn begin(id: u16, role: u16, keep: bool) -> Vec<u8> {
        let [r1, r0] = role.to_be_bytes();
        rec(BEGIN_REQUEST, id, &[r1, r0, u8::from(keep), 0, 0, 0, 0, 0])
    }

    fn request(id: u16, vars: &[(&str, &str)], body: &[u8], keep: bool) -> Vec<u8> {
        let mut out = begin(id, ROLE_RESPONDER, keep);
        let mut block = Vec::new();
        for (k, v) in vars {
            push_pair(&mut block, k.as_bytes(), v.as_bytes());
        }
        if !block.is_empty() {
            out.extend(rec(PARAMS, id, &block));
        }
        out.extend(rec(PARAMS, id, &[]));
        if !body.is_empty() {
            out.extend(rec(STDIN, id, body));
        }
        out.extend(rec(STDIN, id, &[]));
        out
    }

    /// Reads records until END_REQUEST; returns (stdout, protocol status, other records).
    /// Records other than STDOUT and END_REQUEST: (type, request id, content).
    type Others = Vec<(u8, u16, Vec<u8>)>;

    fn reply(c: &mut UnixStream) -> (Vec<u8>, u8, Others) {
        let mut stdout = Vec::new();
        let mut others = Vec::new();
        let mut content = Vec::new();
        loop {
            let h = read_record(c, &mut content)
                .expect("a record")
                .expect("not closed");
            match h.kind {
                STDOUT => stdout.extend_from_slice(&content),
                END_REQUEST => return (stdout, content[4], others),
                k => others.push((k, h.id, content.clone())),
            }
        }
    }

    fn body_of(stdout: &[u8]) -> String {
        let text = String::from_utf8_lossy(stdout).into_owned();
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or(text)
    }

    #[test]
    fn each_request_on_a_kept_connection_gets_only_its_own_variables() {
        let (mut c, t) = start(echo, ResponderLimits::default());
        c.write_all(&request(
            1,
            &[("FORMWARDEN_ROOT", "/a"), ("REMOTE_ADDR", "192.0.2.1")],
            b"one",
            true,
        ))
        .expect("send");
        let (out, status, _) = reply(&mut c);
        assert_eq!(status, REQUEST_COMPLETE);
        assert!(out.starts_with(b"Status: 200 OK\r\n"));
        assert_eq!(
            body_of(&out),
            "root=/a addr=192.0.2.1 body=one read_ok=true"
        );
        c.write_all(&request(9, &[("FORMWARDEN_ROOT", "/b")], b"", false))
            .expect("send");
        let (out, _, _) = reply(&mut c);
        assert_eq!(body_of(&out), "root=/b addr=- body= read_ok=true");
        // Without keep-conn the responder closes after the answer.
        let mut rest = Vec::new();
        assert_eq!(c.read_to_end(&mut rest).expect("eof"), 0);
        assert!(t.join().expect("join").is_ok());
    }

    #[test]
    fn management_records_multiplexing_roles_and_aborts() {
        let (mut c, t) = start(echo, ResponderLimits::default());
        // FCGI_GET_VALUES, with a name we do not know.
        let mut q = Vec::new();
        for n in [
            "FCGI_MAX_CONNS",
            "FCGI_MPXS_CONNS",
            "X_UNKNOWN",
            "FCGI_MAX_REQS",
        ] {
            push_pair(&mut q, n.as_bytes(), b"");
        }
        c.write_all(&rec(GET_VALUES, 0, &q)).expect("send");
        let mut content = Vec::new();
        let h = read_record(&mut c, &mut content).expect("ok").expect("rec");
        assert_eq!((h.kind, h.id), (GET_VALUES_RESULT, 0));
        let got = parse_pairs(&content).expect("pairs");
        assert_eq!(
            got,
            vec![
                (&b"FCGI_MAX_CONNS"[..], &b"32"[..]),
                (&b"FCGI_MPXS_CONNS"[..], &b"0"[..]),
                (&b"FCGI_MAX_REQS"[..], &b"32"[..])
            ]
        );
        // An unknown management type.
        c.write_all(&rec(42, 0, b"")).expect("send");
        let h = read_record(&mut c, &mut content).expect("ok").expect("rec");
        assert_eq!((h.kind, content.first().copied()), (UNKNOWN_TYPE, Some(42)));
        // Another role, with keep-conn: refused, connection stays.
        c.write_all(&begin(3, 2, true)).expect("send");
        let h = read_record(&mut c, &mut content).expect("ok").expect("rec");
        assert_eq!((h.kind, h.id, content[4]), (END_REQUEST, 3, UNKNOWN_ROLE));
        // A second request id while one is running is refused; the first one completes.
        let mut r = begin(4, ROLE_RESPONDER, true);
        r.extend(begin(5, ROLE_RESPONDER, true));
        r.extend(&request(4, &[("REMOTE_ADDR", "x")], b"", true)[16..]);
        c.write_all(&r).expect("send");
        let (out, status, others) = reply(&mut c);
        assert_eq!(status, CANT_MPX_CONN, "the refusal for id 5 comes first");
        assert!(out.is_empty() && others.is_empty());
        let (out, status, _) = reply(&mut c);
        assert_eq!(status, REQUEST_COMPLETE);
        assert_eq!(body_of(&out), "root=- addr=x body= read_ok=true");
        // An aborted request ends without running the handler.
        let mut r = begin(6, ROLE_RESPONDER, false);
        r.extend(rec(ABORT_REQUEST, 6, b""));
        c.write_all(&r).expect("send");
        let (out, status, _) = reply(&mut c);
        assert!(out.is_empty());
        assert_eq!(status, REQUEST_COMPLETE);
        assert!(t.join().expect("join").is_ok());
    }

    #[test]
    fn oversized_params_get_a_400_and_oversized_stdin_is_bounded() {
        let limits = ResponderLimits {
            max_params_bytes: 100,
            max_stdin_bytes: 10,
            ..ResponderLimits::default()
        };
        let (mut c, t) = start(echo, limits);
        let long = "v".repeat(200);
        c.write_all(&request(1, &[("HTTP_X", &long)], b"", true))
            .expect("send");
        let (out, status, _) = reply(&mut c);
        assert_eq!(status, REQUEST_COMPLETE);
        assert!(out.starts_with(b"Status: 400 Bad Request\r\n"));
        // The handler gets the kept prefix and then an error, never unbounded memory.
        c.write_all(&request(2, &[], &[b'b'; 25], false))
            .expect("send");
        let (out, _, _) = reply(&mut c);
        assert_eq!(body_of(&out), "root=- addr=- body= read_ok=false");
        assert!(t.join().expect("join").is_ok());
    }

    #[test]
    fn long_answers_arrive_whole() {
        let (mut c, t) = start(big, ResponderLimits::default());
        c.write_all(&request(1, &[], b"", false)).expect("send");
        let (out, _, _) = reply(&mut c);
        assert_eq!(body_of(&out).len(), 200_000);
        assert!(t.join().expect("join").is_ok());
    }

    #[test]
    fn malformed_input_closes_only_the_connection() {
        let cases: Vec<Vec<u8>> = vec![
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            vec![1, 1, 0],
            // BEGIN, then PARAMS whose pair claims 2^31 - 1 bytes.
            {
                let mut r = begin(1, ROLE_RESPONDER, false);
                r.extend(rec(PARAMS, 1, &[0xff, 0xff, 0xff, 0xff, 1, b'a', b'b']));
                r.extend(rec(PARAMS, 1, &[]));
                r.extend(rec(STDIN, 1, &[]));
                r
            },
            // A short BEGIN_REQUEST body.
            rec(BEGIN_REQUEST, 1, &[0, 1]),
            // A record announcing 65535 bytes, then the end.
            vec![1, PARAMS, 0, 1, 0xff, 0xff, 0, 0, 1, 2, 3],
        ];
        for case in cases {
            let (mut c, t) = start(echo, ResponderLimits::default());
            c.write_all(&case).expect("send");
            let _ = c.shutdown(Shutdown::Write);
            let mut rest = Vec::new();
            let _ = c.read_to_end(&mut rest);
            assert!(
                matches!(t.join().expect("no panic"), Err(ConnError::Malformed(_))),
                "case {case:?}"
            );
        }
    }

    #[test]
    fn a_stalled_peer_is_cut_off_by_the_deadline() {
        let limits = ResponderLimits {
            read_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(300),
            request_deadline: Duration::from_millis(300),
            ..ResponderLimits::default()
        };
        let (mut c, t) = start(echo, limits);
        let started = Instant::now();
        c.write_all(&begin(1, ROLE_RESPONDER, false)).expect("send");
        // Trickle: one byte at a time, each within the per-read timeout.
        let params = rec(PARAMS, 1, b"\x01\x01ab");
        for b in params.iter().cycle().take(40) {
            if c.write_all(&[*b]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(30));
        }
        let r = t.join().expect("no panic");
        assert!(matches!(r, Err(ConnError::Io(_))), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn idle_kept_connections_make_room_for_new_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let limits = ResponderLimits {
            max_conns: 2,
            ..ResponderLimits::default()
        };
        thread::spawn(move || serve(&Listener::Unix(listener), echo, &limits, None));
        // Two connections that each finish a request and stay open.
        let mut kept = Vec::new();
        for id in 1..=2 {
            let mut c = UnixStream::connect(&path).expect("connect");
            c.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            c.write_all(&request(id, &[], b"", true)).expect("send");
            reply(&mut c);
            kept.push(c);
        }
        // A third one is still served, promptly.
        let started = Instant::now();
        let mut c = UnixStream::connect(&path).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        c.write_all(&request(3, &[("REMOTE_ADDR", "z")], b"", false))
            .expect("send");
        let (out, _, _) = reply(&mut c);
        assert_eq!(body_of(&out), "root=- addr=z body= read_ok=true");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    fn moody(req: Request, body: &mut dyn Read) -> Response {
        if req.var("REMOTE_ADDR") == Some("panic") {
            panic!("a handler bug");
        }
        echo(req, body)
    }

    #[test]
    fn a_panicking_handler_closes_only_its_connection() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sock");
        let listener = UnixListener::bind(&path).expect("bind");
        thread::spawn(move || {
            serve(
                &Listener::Unix(listener),
                moody,
                &ResponderLimits::default(),
                None,
            )
        });
        for round in 0..3 {
            let mut c = UnixStream::connect(&path).expect("connect");
            c.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            c.write_all(&request(1, &[("REMOTE_ADDR", "panic")], b"", false))
                .expect("send");
            let mut rest = Vec::new();
            let _ = c.read_to_end(&mut rest);
            assert!(rest.is_empty(), "no answer from a panicked request");
            let mut c = UnixStream::connect(&path).expect("connect");
            c.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            c.write_all(&request(2, &[("REMOTE_ADDR", "ok")], b"", false))
                .expect("send");
            let (out, _, _) = reply(&mut c);
            assert_eq!(
                body_of(&out),
                "root=- addr=ok body= read_ok=true",
                "round {round}"
            );
        }
    }
}
