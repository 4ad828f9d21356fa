//! Reading a request from the client: the head up to its blank line, bounded in size
//! ([`MAX_HEAD`](crate::MAX_HEAD)) and in time (the connection's deadline), parsed by
//! `httparse`, then the declared body. What the parser leaves open is decided here, the
//! way RFC 9112 asks of a server: exactly one `Host` for HTTP/1.1, no chunked uploads
//! (411), one unambiguous `Content-Length` within [`MAX_BODY`](crate::MAX_BODY), header
//! values that are text. It must never buffer more than those bounds, and never guess at a
//! framing that two parsers could read differently (request smuggling): such a request is
//! refused.

use crate::{MAX_BODY, MAX_HEAD};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

/// At most this many header fields; one more is answered 431 like an oversized head.
const MAX_HEADERS: usize = 64;

/// Why a connection ends before a request was parsed.
pub(crate) enum NoRequest {
    /// The client closed or went quiet before sending anything worth answering.
    Gone,
    /// The request is refused with this status; the label is what the log line shows.
    Answer(u16, (String, String)),
}

/// Reads and parses the request head; returns it with whatever body bytes arrived with it.
pub(crate) fn read_request(
    stream: &mut TcpStream,
    deadline: Instant,
) -> Result<(RequestHead, Vec<u8>), NoRequest> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        match parse_head(&buf) {
            Ok(Some((head, end))) => return Ok((head, buf[end..].to_vec())),
            Ok(None) if buf.len() < MAX_HEAD => {}
            Ok(None) => return Err(NoRequest::Answer(431, log_label(&buf))),
            Err(status) => return Err(NoRequest::Answer(status, log_label(&buf))),
        }
        match read_until(stream, &mut chunk, deadline) {
            Ok(0) if buf.is_empty() => return Err(NoRequest::Gone),
            Ok(0) => return Err(NoRequest::Answer(400, log_label(&buf))),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // A browser's speculative connection that never sends anything is not an error
            // worth a log line; a request cut off half-way is.
            Err(e) if e.kind() == io::ErrorKind::TimedOut && !buf.is_empty() => {
                return Err(NoRequest::Answer(408, log_label(&buf)));
            }
            Err(_) => return Err(NoRequest::Gone),
        }
    }
}

/// Method and path for the log line of a request refused before it was parsed, taken from
/// its request line when that much is readable, `-` otherwise. The path is shortened because
/// a refused request may be refused precisely for its size.
pub(crate) fn log_label(buf: &[u8]) -> (String, String) {
    let mut parts = std::str::from_utf8(request_line(buf))
        .unwrap_or("")
        .split(' ');
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
pub(crate) fn read_until(
    stream: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
) -> io::Result<usize> {
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

/// Reads the declared body, sending `100 Continue` first when the client waits for it.
pub(crate) fn read_body(
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

/// A parsed request line and header section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestHead {
    pub(crate) method: String,
    /// The raw request-target, as sent (it becomes `REQUEST_URI`).
    pub(crate) target: String,
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub(crate) version: &'static str,
    /// Header fields in arrival order, names as sent, values trimmed.
    pub(crate) headers: Vec<(String, String)>,
    /// The validated `Content-Length`, when one was sent.
    pub(crate) content_length: Option<u64>,
}

impl RequestHead {
    /// The first value of a header, by case-insensitive name.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The target without its query string.
    pub(crate) fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    /// The query string without the `?`; empty when there is none.
    pub(crate) fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }
}

/// Parses the request head at the start of `buf`: `Ok(None)` while it is incomplete, else
/// the head and the offset just past its blank line. The error is the status to answer with.
/// Blank lines before the request line are skipped and `\n` line ends accepted (both by
/// `httparse`, as RFC 9112 allows); obsolete line folding, whitespace before a colon and
/// control characters in a value are refused by it.
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, u16> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let end = match req.parse(buf) {
        Ok(httparse::Status::Complete(end)) if end > MAX_HEAD => return Err(431),
        Ok(httparse::Status::Complete(end)) => end,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(431),
        // `httparse` knows only 1.0 and 1.1; another well-formed version is owed a 505.
        Err(httparse::Error::Version) if names_other_version(buf) => return Err(505),
        Err(_) => return Err(400),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(400);
    };
    // `httparse` lets bytes above 0x7f through in the target; they must arrive escaped.
    if target.is_empty() || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(400);
    }
    // Header values may in theory carry obsolete non-ASCII bytes; a development preview can
    // refuse them, and refusing keeps every value a valid environment string.
    let mut headers = Vec::with_capacity(req.headers.len());
    for field in req.headers.iter() {
        let value = std::str::from_utf8(field.value).map_err(|_| 400u16)?;
        headers.push((
            field.name.to_string(),
            value.trim_matches([' ', '\t']).to_string(),
        ));
    }
    let version = if minor == 1 { "HTTP/1.1" } else { "HTTP/1.0" };
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
    let content_length = content_length(named("content-length"))?;
    Ok(Some((
        RequestHead {
            method: method.to_string(),
            target: target.to_string(),
            version,
            headers,
            content_length,
        },
        end,
    )))
}

/// The one length all `Content-Length` values (and comma-separated list items) agree on.
fn content_length<'a>(values: impl Iterator<Item = &'a str>) -> Result<Option<u64>, u16> {
    let mut length = None;
    for value in values.flat_map(|v| v.split(',')) {
        let value = value.trim_matches([' ', '\t']);
        if value.is_empty() || value.len() > 19 || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(400);
        }
        let n: u64 = value.parse().map_err(|_| 400u16)?;
        // Differing lengths mean the message framing is ambiguous; refusing is the only safe
        // reading.
        if length.is_some_and(|seen| seen != n) {
            return Err(400);
        }
        length = Some(n);
    }
    if length.is_some_and(|n| n > MAX_BODY) {
        return Err(413);
    }
    Ok(length)
}

/// True when the request line is `METHOD TARGET HTTP/x.y` with a version other than the
/// two this server speaks.
fn names_other_version(buf: &[u8]) -> bool {
    let line = request_line(buf);
    let parts: Vec<&str> = std::str::from_utf8(line).unwrap_or("").split(' ').collect();
    matches!(parts.as_slice(), [_, _, v] if v.strip_prefix("HTTP/")
    .and_then(|rest| rest.split_once('.'))
    .is_some_and(|(major, minor)| {
        !major.is_empty()
            && !minor.is_empty()
            && major.bytes().all(|b| b.is_ascii_digit())
            && minor.bytes().all(|b| b.is_ascii_digit())
    }))
}

/// The first non-blank line of `buf`, without its line end.
fn request_line(buf: &[u8]) -> &[u8] {
    buf.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .find(|l| !l.is_empty())
        .unwrap_or_default()
}

/// An RFC 9110 token: what a method is made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A complete head given as text, parsed; for the tests of this crate.
#[cfg(test)]
pub(crate) fn head(text: &str) -> Result<RequestHead, u16> {
    match parse_head(text.as_bytes()) {
        Ok(Some((head, end))) => {
            assert_eq!(end, text.len(), "the head ends at its blank line: {text:?}");
            Ok(head)
        }
        Ok(None) => panic!("incomplete: {text:?}"),
        Err(status) => Err(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_ends_at_the_first_blank_line_with_crlf_lf_and_leading_blank_lines() {
        // Both line-end styles end the head at the first blank line after the request line.
        let end = |b: &[u8]| parse_head(b).map(|h| h.map(|(_, end)| end));
        assert_eq!(end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"), Ok(Some(27)));
        assert_eq!(end(b"GET / HTTP/1.1\nHost: a\n\nbody"), Ok(Some(24)));
        assert_eq!(end(b"\r\n\r\nGET / HTTP/1.0\r\n\r\n"), Ok(Some(22)));
        assert_eq!(end(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        assert_eq!(end(b"\r\n\r\n"), Ok(None));
    }

    #[test]
    fn too_many_header_fields_are_refused_like_a_large_head() {
        let mut text = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..MAX_HEADERS {
            text.push_str(&format!("X-{i}: v\r\n"));
        }
        text.push_str("\r\n");
        assert_eq!(head(&text), Err(431));
        assert_eq!(head("GET /caf\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n"), Err(400));
        assert_eq!(
            head("GET / HTTP/1.1\r\nHost: a\r\nX: caf\u{e9}\r\n\r\n")
                .map(|h| h.header("x").map(String::from)),
            Ok(Some("caf\u{e9}".into()))
        );
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
}
