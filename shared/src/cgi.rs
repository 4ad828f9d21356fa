//! CGI requests and responses (RFC 3875). A [`Request`] is built from a map of meta-
//! variables, never straight from `std::env`, so the same code serves plain CGI (variables
//! from the process environment) and FastCGI (variables per request). The body is read only
//! up to `CONTENT_LENGTH` and never beyond the configured limit. A [`Response`] is written
//! with a `Status:` header; header values are built by us, never copied from the request.

use std::collections::HashMap;
use std::io::{Read, Write};

/// The request's meta-variables and (once read) its body.
#[derive(Debug, Clone, Default)]
pub struct Request {
    vars: HashMap<String, String>,
    /// The body, empty until [`Request::read_body`] ran.
    pub body: Vec<u8>,
}

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// No (or an unparsable) `CONTENT_LENGTH` on a request that needs a body.
    LengthRequired,
    /// `CONTENT_LENGTH` is above the limit (413); nothing was read.
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The client sent fewer bytes than it announced.
    Truncated,
}

impl Request {
    /// A request over the given meta-variables.
    pub fn new(vars: HashMap<String, String>) -> Request {
        Request {
            vars,
            body: Vec::new(),
        }
    }

    /// A request from the process environment (plain CGI). Values that are not UTF-8 are
    /// replaced lossily; nothing we use legitimately contains such bytes.
    pub fn from_process_env() -> Request {
        let vars = std::env::vars_os()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .collect();
        Request::new(vars)
    }

    /// True when the process runs as CGI (a web server set `GATEWAY_INTERFACE`).
    pub fn is_cgi(&self) -> bool {
        self.vars.contains_key("GATEWAY_INTERFACE") || self.vars.contains_key("REQUEST_METHOD")
    }

    /// A meta-variable.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// A request header, e.g. `header("accept")` reads `HTTP_ACCEPT`.
    pub fn header(&self, name: &str) -> Option<&str> {
        let key = format!("HTTP_{}", name.to_ascii_uppercase().replace('-', "_"));
        self.var(&key)
    }

    /// The method, upper-case (`GET` when unset).
    pub fn method(&self) -> String {
        self.var("REQUEST_METHOD")
            .unwrap_or("GET")
            .to_ascii_uppercase()
    }

    /// The decoded query parameters (lenient: a malformed query yields no parameters).
    pub fn query(&self) -> Vec<(String, String)> {
        let q = self.var("QUERY_STRING").unwrap_or("");
        serde_urlencoded::from_str(q).unwrap_or_default()
    }

    /// One query parameter.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The value of cookie `name`.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.header("cookie")?
            .split(';')
            .filter_map(|p| p.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.trim_matches('"').to_string())
    }

    /// The media type of the body without parameters, lower-case.
    pub fn content_type(&self) -> Option<String> {
        let ct = self.var("CONTENT_TYPE")?;
        Some(
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase(),
        )
    }

    /// True when the client asked for JSON (`Accept: application/json` or `?format=json`).
    pub fn wants_json(&self) -> bool {
        self.header("accept")
            .is_some_and(|a| a.contains("application/json"))
            || self.query_param("format").as_deref() == Some("json")
    }

    /// True when the request comes from an `<img>` element (or asks for an image and not
    /// a page): error answers are then pictures that say what went wrong, instead of a
    /// page the browser would show as a broken image.
    pub fn wants_image(&self) -> bool {
        if self.wants_json() {
            return false;
        }
        if let Some(dest) = self.header("sec-fetch-dest") {
            return dest.eq_ignore_ascii_case("image");
        }
        self.header("accept")
            .is_some_and(|a| a.contains("image/") && !a.contains("text/html"))
    }

    /// True when the request came over TLS (cookies then get `Secure`).
    pub fn is_https(&self) -> bool {
        self.var("HTTPS")
            .is_some_and(|v| v.eq_ignore_ascii_case("on") || v == "1")
            || self.var("REQUEST_SCHEME") == Some("https")
    }

    /// The URL path of this script (`SCRIPT_NAME`).
    pub fn script_name(&self) -> &str {
        self.var("SCRIPT_NAME").unwrap_or("")
    }

    /// The URL of a sibling script: `/cgi-bin/contact.cgi` → `/cgi-bin/captcha.cgi` for
    /// `sibling("contact", "captcha")`, so links work whatever extension the host needs.
    pub fn sibling_url(&self, own: &str, other: &str) -> String {
        let script = self.script_name();
        match script.rfind(own) {
            Some(i) => format!("{}{}{}", &script[..i], other, &script[i + own.len()..]),
            None => other.to_string(),
        }
    }

    /// Reads the body announced by `CONTENT_LENGTH`, refusing anything above `limit`
    /// before reading a byte of it.
    pub fn read_body(&mut self, input: &mut dyn Read, limit: usize) -> Result<(), BodyError> {
        let len: usize = match self.var("CONTENT_LENGTH").map(str::trim) {
            None | Some("") => return Err(BodyError::LengthRequired),
            Some(s) => match s.parse::<u64>() {
                Ok(n) if n > limit as u64 => return Err(BodyError::TooLarge { limit }),
                Ok(n) => n as usize,
                Err(_) => return Err(BodyError::LengthRequired),
            },
        };
        let mut body = Vec::with_capacity(len);
        input
            .take(len as u64)
            .read_to_end(&mut body)
            .map_err(|_| BodyError::Truncated)?;
        if body.len() != len {
            return Err(BodyError::Truncated);
        }
        self.body = body;
        Ok(())
    }
}

/// A response to write back.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// The reason phrase for the statuses the executables and the local preview answer with
/// (the one table of the project; the preview's own answers and a CGI `Status` line without
/// a phrase both read it).
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
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

impl Response {
    /// An empty response; stateful answers are never cached.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: vec![("Cache-Control".into(), "no-store".into())],
            body: Vec::new(),
        }
    }

    /// Adds a header. Values with line breaks are dropped (and logged), so nothing can
    /// ever split the header block.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Response {
        let value = value.into();
        if value.contains(['\r', '\n', '\0']) || name.contains(['\r', '\n', ':', '\0']) {
            tracing::error!(name, "refused a header value with a line break");
            return self;
        }
        self.headers.push((name.to_string(), value));
        self
    }

    /// A header's value, if set.
    pub fn get_header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Plain UTF-8 text.
    pub fn text(status: u16, body: String) -> Response {
        Response::bytes(status, "text/plain; charset=utf-8", body.into_bytes())
    }

    /// An HTML page.
    pub fn html(status: u16, page: String) -> Response {
        let mut r = Response::new(status).header("Content-Type", "text/html; charset=utf-8");
        r.body = page.into_bytes();
        r
    }

    /// A JSON document.
    pub fn json(status: u16, doc: String) -> Response {
        let mut r = Response::new(status).header("Content-Type", "application/json");
        r.body = doc.into_bytes();
        r
    }

    /// Binary content of type `content_type`.
    pub fn bytes(status: u16, content_type: &str, body: Vec<u8>) -> Response {
        let mut r = Response::new(status).header("Content-Type", content_type);
        r.body = body;
        r
    }

    /// The answer to a HEAD request: the same status and headers as the GET answer
    /// (`Content-Length` included), without the body.
    pub fn into_head(mut self) -> Response {
        if self.status != 204 && self.get_header("Content-Length").is_none() {
            let len = self.body.len().to_string();
            self = self.header("Content-Length", len);
        }
        self.body.clear();
        self
    }

    /// The CGI header block plus body.
    pub fn to_cgi(&self) -> Vec<u8> {
        let mut out = format!("Status: {} {}\r\n", self.status, reason(self.status)).into_bytes();
        for (k, v) in &self.headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        if self.status != 204 && self.get_header("Content-Length").is_none() {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }

    /// Writes the response to `out` (stdout under CGI).
    pub fn write_to(&self, out: &mut dyn Write) -> std::io::Result<()> {
        out.write_all(&self.to_cgi())?;
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(vars: &[(&str, &str)]) -> Request {
        Request::new(
            vars.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn body_is_bounded_by_the_limit_and_the_announced_length() {
        let mut r = req(&[("CONTENT_LENGTH", "5")]);
        assert_eq!(r.read_body(&mut &b"hello world"[..], 100), Ok(()));
        assert_eq!(r.body, b"hello");
        let mut r = req(&[("CONTENT_LENGTH", "500")]);
        assert_eq!(
            r.read_body(&mut &b""[..], 100),
            Err(BodyError::TooLarge { limit: 100 })
        );
        let mut r = req(&[("CONTENT_LENGTH", "10")]);
        assert_eq!(
            r.read_body(&mut &b"abc"[..], 100),
            Err(BodyError::Truncated)
        );
        let mut r = req(&[]);
        assert_eq!(
            r.read_body(&mut &b"abc"[..], 100),
            Err(BodyError::LengthRequired)
        );
        let mut r = req(&[("CONTENT_LENGTH", "-1")]);
        assert_eq!(
            r.read_body(&mut &b"abc"[..], 100),
            Err(BodyError::LengthRequired)
        );
    }

    #[test]
    fn cookies_headers_and_siblings() {
        let r = req(&[
            ("HTTP_COOKIE", "a=1; fw_captcha=abc; b=2"),
            ("HTTP_ACCEPT", "application/json"),
            ("SCRIPT_NAME", "/cgi-bin/contact.cgi"),
        ]);
        assert_eq!(r.cookie("fw_captcha").as_deref(), Some("abc"));
        assert!(r.wants_json());
        assert_eq!(r.sibling_url("contact", "captcha"), "/cgi-bin/captcha.cgi");
    }

    #[test]
    fn header_values_with_line_breaks_are_dropped() {
        let r = Response::new(200).header("Location", "/x\r\nSet-Cookie: evil=1");
        assert!(r.get_header("Location").is_none());
        assert!(String::from_utf8_lossy(&r.to_cgi()).starts_with("Status: 200 OK\r\n"));
    }
}
