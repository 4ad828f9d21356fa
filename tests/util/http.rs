//! A tiny HTTP/1.1 client over `TcpStream` for the tests that talk to a real web server or
//! to the local preview: one request per connection (`Connection: close`), request targets
//! sent as written (so that `%2e%2e` reaches the server unnormalized), chunked and
//! length-delimited bodies, and a cookie jar for a visitor's sequence of requests.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// How long one HTTP exchange may take before the client gives up with a clear message.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// Headers in order, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Reply {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Status, headers and (text) body, for assertion messages.
    pub fn describe(&self) -> String {
        let heads: Vec<String> = self
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let body = self.text();
        let body: String = body.chars().take(2000).collect();
        format!("{} {}\n\n{body}", self.status, heads.join("\n"))
    }
}

/// One HTTP/1.1 request on a new connection (`Connection: close`); `target` is sent
/// exactly as given, unnormalized. Panics with the raw answer when there is no complete
/// HTTP answer.
pub fn request(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    try_request(port, method, target, headers, body)
        .unwrap_or_else(|why| panic!("{method} {target}: {why}"))
}

/// [`request`], with an incomplete or garbled answer as an error that quotes it.
pub fn try_request(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| format!("connect to 127.0.0.1:{port}: {e}"))?;
    s.set_read_timeout(Some(HTTP_TIMEOUT))
        .expect("read timeout");
    s.set_write_timeout(Some(HTTP_TIMEOUT))
        .expect("write timeout");
    let mut head =
        format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    // A server may answer (413) and close before it read the whole body; its answer is
    // then still there to read, so a failed send is only reported when nothing came.
    let sent = s.write_all(&raw);
    let mut answer = Vec::new();
    // read_to_end keeps what arrived before an error (a reset after the answer).
    let received = s.read_to_end(&mut answer);
    parse_reply(&answer, method).map_err(|why| {
        format!(
            "{why} (send: {sent:?}, receive: {received:?}): {:?}",
            String::from_utf8_lossy(&answer)
        )
    })
}

fn parse_reply(raw: &[u8], method: &str) -> Result<Reply, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of the header block")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty answer")?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let rest = &raw[end + 4..];
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v): &(String, String)| v.clone())
    };
    let body = if method == "HEAD" || status == 204 || status == 304 {
        Vec::new()
    } else if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(len) = get("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad Content-Length {len:?}"))?;
        if rest.len() < len {
            return Err(format!("body cut short: {} of {len} bytes", rest.len()));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line without end")?;
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size + 2 {
            return Err("chunk cut short".into());
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// A browser in miniature: keeps cookies between requests to one server.
pub struct Client {
    port: u16,
    cookies: BTreeMap<String, String>,
}

impl Client {
    /// A client of the server on `port`.
    pub fn new(port: u16) -> Client {
        Client {
            port,
            cookies: BTreeMap::new(),
        }
    }

    /// The value of a cookie the server set.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    /// A request with the jar's cookies; cookies the answer sets go into the jar.
    pub fn send(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let jar: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let jar = jar.join("; ");
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if !jar.is_empty() {
            all.push(("Cookie", &jar));
        }
        let reply = request(self.port, method, target, &all, body);
        for (k, v) in &reply.headers {
            if k != "set-cookie" {
                continue;
            }
            let mut parts = v.split(';');
            let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else {
                continue;
            };
            let expired = parts.any(|a| {
                let a = a.trim().to_ascii_lowercase();
                a == "max-age=0" || a.starts_with("max-age=-")
            });
            if expired {
                self.cookies.remove(name.trim());
            } else {
                self.cookies
                    .insert(name.trim().to_string(), value.trim().to_string());
            }
        }
        reply
    }

    /// `GET target`.
    pub fn get(&mut self, target: &str) -> Reply {
        self.send("GET", target, &[], b"")
    }

    /// `POST target` with an urlencoded form.
    pub fn post_form(&mut self, target: &str, fields: &[(&str, String)]) -> Reply {
        let body = serde_urlencoded::to_string(fields).expect("encode form");
        self.send(
            "POST",
            target,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            body.as_bytes(),
        )
    }
}
