//! A small FastCGI client written from the spec, independent of the library's responder,
//! so the tests do not check the protocol code against itself. It speaks to the real
//! executables the way nginx does: BEGIN_REQUEST, PARAMS, STDIN, then it collects STDOUT
//! (and STDERR) up to END_REQUEST and parses the CGI answer with the harness' `Answer`.

use crate::util::{Answer, Cgi};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const BEGIN_REQUEST: u8 = 1;
pub const ABORT_REQUEST: u8 = 2;
pub const END_REQUEST: u8 = 3;
pub const PARAMS: u8 = 4;
pub const STDIN: u8 = 5;
pub const STDOUT: u8 = 6;
pub const STDERR: u8 = 7;
pub const GET_VALUES: u8 = 9;
pub const GET_VALUES_RESULT: u8 = 10;
pub const UNKNOWN_TYPE: u8 = 11;
pub const RESPONDER: u16 = 1;
pub const AUTHORIZER: u16 = 2;
pub const REQUEST_COMPLETE: u8 = 0;
pub const CANT_MPX_CONN: u8 = 1;
pub const UNKNOWN_ROLE: u8 = 3;

/// Where a responder listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl Endpoint {
    /// Opens a connection; reads give up after 20 s so a hung responder fails the test.
    pub fn connect(&self) -> io::Result<Conn> {
        let c = match self {
            Endpoint::Unix(p) => Conn::Unix(UnixStream::connect(p)?),
            Endpoint::Tcp(a) => Conn::Tcp(TcpStream::connect_timeout(a, Duration::from_secs(5))?),
        };
        c.set_read_timeout(Duration::from_secs(20))?;
        Ok(c)
    }
}

/// One connection to a responder.
pub enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    fn set_read_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_read_timeout(Some(t)),
            Conn::Tcp(s) => s.set_read_timeout(Some(t)),
        }
    }

    /// Closes our sending side: the responder sees end of input.
    pub fn shutdown_write(&self) {
        let _ = match self {
            Conn::Unix(s) => s.shutdown(Shutdown::Write),
            Conn::Tcp(s) => s.shutdown(Shutdown::Write),
        };
    }

    /// Reads until the responder closes; returns the bytes and whether it closed within
    /// the read timeout (an error other than a timeout, such as a reset, counts as closed).
    pub fn drain(&mut self) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        match self.read_to_end(&mut out) {
            Ok(_) => (out, true),
            Err(e) => (
                out,
                !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ),
            ),
        }
    }

    /// Reads one record: (type, request id, content).
    pub fn read_record(&mut self) -> io::Result<(u8, u16, Vec<u8>)> {
        let mut h = [0u8; 8];
        self.read_exact(&mut h)?;
        assert_eq!(h[0], 1, "responder sent version {}", h[0]);
        let len = usize::from(u16::from_be_bytes([h[4], h[5]]));
        let mut content = vec![0u8; len + usize::from(h[6])];
        self.read_exact(&mut content)?;
        content.truncate(len);
        Ok((h[1], u16::from_be_bytes([h[2], h[3]]), content))
    }

    /// Reads records until END_REQUEST for `id`.
    pub fn read_reply(&mut self, id: u16) -> io::Result<Reply> {
        let mut reply = Reply::default();
        loop {
            let (kind, rid, content) = self.read_record()?;
            match kind {
                STDOUT if rid == id => reply.stdout.extend_from_slice(&content),
                STDERR if rid == id => reply.stderr.extend_from_slice(&content),
                END_REQUEST if rid == id => {
                    reply.app_status =
                        u32::from_be_bytes([content[0], content[1], content[2], content[3]]);
                    reply.protocol_status = content[4];
                    return Ok(reply);
                }
                _ => reply.others.push((kind, rid, content)),
            }
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What came back for one request.
#[derive(Debug, Default)]
pub struct Reply {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub app_status: u32,
    pub protocol_status: u8,
    /// Records for other ids (refusals of a second request, management answers).
    pub others: Vec<(u8, u16, Vec<u8>)>,
}

/// One record, unpadded.
pub fn record(kind: u8, id: u16, content: &[u8]) -> Vec<u8> {
    assert!(content.len() <= 65535);
    let mut out = vec![1, kind];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(content.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(content);
    out
}

/// A stream (PARAMS, STDIN) as records of at most `chunk` bytes, ended by an empty record.
pub fn stream(kind: u8, id: u16, data: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for part in data.chunks(chunk) {
        out.extend(record(kind, id, part));
    }
    out.extend(record(kind, id, &[]));
    out
}

/// A BEGIN_REQUEST record.
pub fn begin(id: u16, role: u16, keep_conn: bool) -> Vec<u8> {
    let mut body = role.to_be_bytes().to_vec();
    body.extend_from_slice(&[u8::from(keep_conn), 0, 0, 0, 0, 0]);
    record(BEGIN_REQUEST, id, &body)
}

fn push_len(out: &mut Vec<u8>, n: usize) {
    if n < 128 {
        out.push(n as u8);
    } else {
        out.extend_from_slice(&((n as u32) | 0x8000_0000).to_be_bytes());
    }
}

/// A block of name-value pairs.
pub fn pairs<'a>(list: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in list {
        push_len(&mut out, k.len());
        push_len(&mut out, v.len());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// Decodes a block of name-value pairs (trusting the responder: this is test code).
pub fn parse_pairs(mut b: &[u8]) -> Vec<(String, String)> {
    fn len(b: &mut &[u8]) -> usize {
        if b[0] & 0x80 == 0 {
            let n = usize::from(b[0]);
            *b = &b[1..];
            n
        } else {
            let n = u32::from_be_bytes([b[0] & 0x7f, b[1], b[2], b[3]]) as usize;
            *b = &b[4..];
            n
        }
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let n = len(&mut b);
        let v = len(&mut b);
        let name = String::from_utf8_lossy(&b[..n]).into_owned();
        let value = String::from_utf8_lossy(&b[n..n + v]).into_owned();
        b = &b[n + v..];
        out.push((name, value));
    }
    out
}

/// Sending a harness request over FastCGI instead of running it as a CGI process: the
/// same builder, the same variables, a different transport.
pub trait FastCgi {
    /// The records of this request as request `id`.
    fn encode(&self, id: u16, keep_conn: bool) -> Vec<u8>;
    /// Sends this request on `conn` and reads its answer.
    fn send(&self, conn: &mut Conn, id: u16, keep_conn: bool) -> io::Result<Answer>;
    /// Sends this request on a new connection (no keep-conn, as nginx does by default).
    fn run_on(&self, ep: &Endpoint) -> Answer;
}

impl FastCgi for Cgi {
    // PARAMS go in records of at most 1000 bytes, so names and values straddle record
    // boundaries as they may with real servers.
    fn encode(&self, id: u16, keep_conn: bool) -> Vec<u8> {
        // nginx's fastcgi_params always send these, empty when the request has none.
        let mut vars = self.vars().clone();
        for (k, v) in [
            ("SERVER_SOFTWARE", "formwarden-test-client".to_string()),
            ("CONTENT_TYPE", String::new()),
            ("CONTENT_LENGTH", String::new()),
            (
                "REQUEST_URI",
                vars.get("SCRIPT_NAME").cloned().unwrap_or_default(),
            ),
        ] {
            vars.entry(k.to_string()).or_insert(v);
        }
        let mut out = begin(id, RESPONDER, keep_conn);
        let block = pairs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        out.extend(stream(PARAMS, id, &block, 1000));
        out.extend(stream(STDIN, id, self.body_bytes(), 65535));
        out
    }

    fn send(&self, conn: &mut Conn, id: u16, keep_conn: bool) -> io::Result<Answer> {
        let t = Instant::now();
        conn.write_all(&self.encode(id, keep_conn))?;
        let reply = conn.read_reply(id)?;
        assert_eq!(reply.protocol_status, REQUEST_COMPLETE);
        Ok(Answer::parse(
            &reply.stdout,
            &reply.stderr,
            t.elapsed(),
            Some(reply.app_status as i32),
        ))
    }

    fn run_on(&self, ep: &Endpoint) -> Answer {
        let mut conn = ep.connect().expect("connect to the responder");
        self.send(&mut conn, 1, false).expect("FastCGI exchange")
    }
}
