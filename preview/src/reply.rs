//! Framing the preview's answers: status line, `Date` (IMF-fixdate, by `httpdate`),
//! `Server`, the headers, `Content-Length` and `Connection: close`. Reason phrases come
//! from the library's one table ([`formwarden::cgi::reason`]), which the executables'
//! `Status` lines use too. It must never write a body for 204 or 304, nor a header the
//! caller did not give besides those framing ones.

use crate::SERVER_SOFTWARE;
pub(crate) use formwarden::cgi::reason;
use std::fmt::Write as _;
use std::time::SystemTime;

/// An answer about to be written.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) reason: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    /// A small HTML page for a status the preview itself decides.
    pub(crate) fn error(status: u16) -> Reply {
        let reason = reason(status);
        let body = format!(
            "<!doctype html>\n<html lang=\"en\"><meta charset=\"utf-8\"><title>{status} {reason}</title>\n\
             <h1>{status} {reason}</h1>\n<p>{SERVER_SOFTWARE}</p></html>\n"
        );
        Reply {
            status,
            reason: reason.to_string(),
            headers: vec![("Content-Type".into(), "text/html; charset=utf-8".into())],
            body: body.into_bytes(),
        }
    }

    /// Serializes the answer; `head_only` (for HEAD) keeps the length but drops the body.
    pub(crate) fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nDate: {}\r\nServer: {SERVER_SOFTWARE}\r\n",
            self.status,
            self.reason,
            httpdate::fmt_http_date(SystemTime::now())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_framed_with_length_and_close() {
        // Every answer carries its length and closes; HEAD keeps the length, drops the body.
        let r = Reply::error(404);
        let full = String::from_utf8(r.to_bytes(false)).unwrap();
        assert!(full.starts_with("HTTP/1.1 404 Not Found\r\nDate: "));
        assert!(full.contains(" GMT\r\nServer: formwarden-preview\r\n"));
        assert!(full.contains(&format!("\r\nContent-Length: {}\r\n", r.body.len())));
        assert!(full.contains("\r\nConnection: close\r\n\r\n<!doctype html>"));
        let head_only = String::from_utf8(r.to_bytes(true)).unwrap();
        assert!(head_only.ends_with("\r\n\r\n") && head_only.contains("Content-Length"));
    }
}
