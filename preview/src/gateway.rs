//! The CGI gateway (RFC 3875): which programs `/cgi-bin/` may run, the environment each
//! one gets (the meta-variables plus `FORMWARDEN_ROOT` and `PATH`, nothing else of ours),
//! running it with a deadline and an output bound, and turning its answer (a header block
//! parsed by `httparse`, then the body) into a [`Reply`]. It must never run a program other
//! than the three executables, never pass the preview's own environment beyond `PATH`, and
//! never forward the framing headers a program wrote (the server frames the answer).

use crate::reply::{Reply, reason};
use crate::request::RequestHead;
use crate::{CGI_NAMES, CGI_TIMEOUT, MAX_CGI_OUTPUT, SERVER_SOFTWARE, ServedSite};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Splits `/cgi-bin/<name>[/<path-info>]`; `None` unless the name is one of [`CGI_NAMES`].
pub(crate) fn cgi_route(path: &str) -> Option<(&'static str, Option<&str>)> {
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
pub(crate) fn decode_path_info(raw: &str) -> Option<String> {
    let decoded = String::from_utf8(formwarden::form::percent_decode_strict(raw)?).ok()?;
    (!decoded.chars().any(char::is_control)).then_some(decoded)
}

/// What a CGI process is told about the request it serves.
pub(crate) struct CgiRequest<'a> {
    pub(crate) name: &'static str,
    pub(crate) path_info: Option<&'a str>,
    pub(crate) head: &'a RequestHead,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
}

/// The CGI meta-variables (RFC 3875 section 4.1) plus `FORMWARDEN_ROOT`; with `PATH` this is
/// the child's whole environment.
fn cgi_env(site: &ServedSite, req: &CgiRequest<'_>) -> Vec<(String, OsString)> {
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
pub(crate) fn run_cgi(site: &ServedSite, req: &CgiRequest<'_>, body: Vec<u8>) -> Reply {
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
            return Reply::error(500);
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

    let output = match finish(req.name, &mut child, &rx, stderr_done) {
        Ok(out) => out,
        Err(reply) => return reply,
    };
    match parse_cgi_response(&output) {
        Ok(cgi) => Reply {
            status: cgi.status,
            reason: cgi.reason,
            headers: cgi.headers,
            body: cgi.body,
        },
        Err(why) => {
            eprintln!("preview: malformed response from {}: {why}", req.name);
            Reply::error(502)
        }
    }
}

/// Waits for the program's output and its exit, both bounded by [`CGI_TIMEOUT`]; the error
/// is the answer owed when the output is missing, too large or late. The exit status is
/// only logged: a program that printed a whole answer and then failed still answered.
fn finish(
    name: &str,
    child: &mut Child,
    rx: &mpsc::Receiver<std::io::Result<Vec<u8>>>,
    stderr_done: Option<mpsc::Receiver<()>>,
) -> Result<Vec<u8>, Reply> {
    let started = Instant::now();
    let output = rx.recv_timeout(CGI_TIMEOUT);
    let finished = wait_until(child, started + CGI_TIMEOUT);
    if let Some(done) = stderr_done {
        // Waiting briefly lets the program's own log lines appear before the request's line;
        // a grandchild still holding the pipe must not hold the request up.
        let _ = done.recv_timeout(Duration::from_millis(500));
    }
    let output = match output {
        Ok(Ok(out)) if out.len() as u64 > MAX_CGI_OUTPUT => {
            eprintln!("preview: {} wrote more than {MAX_CGI_OUTPUT} bytes", name);
            return Err(Reply::error(502));
        }
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            eprintln!("preview: reading the output of {} failed: {e}", name);
            return Err(Reply::error(502));
        }
        Err(_) => {
            eprintln!(
                "preview: {} did not finish within {CGI_TIMEOUT:?}; killed",
                name
            );
            return Err(Reply::error(504));
        }
    };
    match finished {
        Some(status) if !status.success() => {
            eprintln!("preview: {} exited with {status}", name);
        }
        Some(_) => {}
        None => eprintln!(
            "preview: {} closed its output but did not exit; killed",
            name
        ),
    }
    Ok(output)
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
    let mut fields = [httparse::EMPTY_HEADER; MAX_CGI_HEADERS];
    let (end, fields) = match httparse::parse_headers(out, &mut fields) {
        Ok(httparse::Status::Complete(parsed)) => parsed,
        Ok(httparse::Status::Partial) => {
            return Err("the output ended before the blank line that ends the headers");
        }
        Err(httparse::Error::TooManyHeaders) => return Err("too many header lines"),
        Err(httparse::Error::HeaderName | httparse::Error::NewLine) => {
            return Err("a header line is not `Name: value`");
        }
        // A stray carriage return or other control character in a value could split our
        // answer into two responses.
        Err(_) => return Err("a header value holds a control character"),
    };
    if fields.is_empty() {
        return Err("no header at all before the blank line");
    }
    let mut status = None;
    let mut has_location = false;
    let mut headers = Vec::new();
    for field in fields {
        let name = field.name;
        let value = std::str::from_utf8(field.value).map_err(|_| "a header value is not UTF-8")?;
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("status") {
            if status.is_some() {
                return Err("two Status headers");
            }
            status = Some(parse_status(value)?);
        } else if !["content-length", "transfer-encoding", "connection"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
        {
            // The framing headers are left out because the server frames the answer
            // itself; a wrong length from the program must not corrupt the connection.
            has_location |= name.eq_ignore_ascii_case("location");
            headers.push((name.to_string(), value.to_string()));
        }
    }
    let (status, reason) = status.unwrap_or_else(|| {
        let code = if has_location { 302 } else { 200 };
        (code, reason(code).to_string())
    });
    Ok(CgiResponse {
        status,
        reason,
        headers,
        body: out[end..].to_vec(),
    })
}

/// Parses a `Status` value such as `503 Service Unavailable` or `404`.
fn parse_status(value: &str) -> Result<(u16, String), &'static str> {
    let (code, phrase) = value.split_once(' ').unwrap_or((value, ""));
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
    let phrase = phrase.trim();
    let phrase = if phrase.is_empty() {
        reason(code)
    } else {
        phrase
    };
    Ok((code, phrase.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DEFAULT_PATH;
    use crate::request::head;
    use std::sync::atomic::AtomicUsize;

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

    fn test_site() -> ServedSite {
        ServedSite {
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
}
