//! formwarden's fuzz targets: one function per target, each driving a real parser of the
//! library or the preview with arbitrary bytes and checking cheap properties beyond "no
//! panic" (a parser never accepts beyond its documented limit, a state value that parses
//! re-serializes and re-parses to the same text, an answer is a well-formed record stream).
//! The AFL++ executables in `targets/` call these; `tests/replay.rs` runs them over the
//! committed corpus and regressions with plain `cargo test`, so CI needs no AFL to check
//! that nothing once found comes back.

use formwarden::cgi::{Request, Response};
use formwarden::config::{Config, check_profile_name};
use formwarden::fastcgi::{ResponderLimits, fuzz_connection};
use formwarden::form;
use formwarden::mail::{SmtpSecurity, Transport, check_mailbox as mail_check};
use formwarden::state::{self, Loaded, Validate};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// A fuzz target: takes any bytes, panics only on a found bug.
pub type Target = fn(&[u8]);

/// Every target, by name: what the replay test iterates over.
pub const TARGETS: [(&str, Target); 6] = [
    ("form", form),
    ("cgi_request", cgi_request),
    ("fastcgi", fastcgi),
    ("config", config),
    ("state", state),
    ("preview_head", preview_head),
];

/// A fixed clock, so that a run is reproducible (validation compares times with it).
const NOW: u64 = 1_800_000_000;

/// The form body parser and the contact validator.
pub fn form(data: &[u8]) {
    let Ok(fields) = form::parse_urlencoded(data) else {
        return;
    };
    if let Ok(contact) = form::validate(&fields) {
        // What validates stays within the documented limits and is a real address.
        assert!(contact.name.chars().count() <= form::MAX_NAME);
        assert!(contact.email.chars().count() <= form::MAX_EMAIL);
        assert!(contact.subject.chars().count() <= form::MAX_SUBJECT);
        assert!(contact.message.chars().count() <= form::MAX_MESSAGE);
        assert!(form::is_email(&contact.email));
        assert!(!contact.name.contains(['\r', '\n']));
    }
}

/// A CGI request: the input up to the first NUL NUL is the environment (`NAME=VALUE`
/// lines), the rest the body on stdin; every accessor runs and the body is read against a
/// small limit.
pub fn cgi_request(data: &[u8]) {
    let split = data.windows(2).position(|w| w == [0, 0]);
    let (env, mut body) = match split {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let vars: HashMap<String, String> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut req = Request::new(vars);
    let _ = (
        req.is_cgi(),
        req.method(),
        req.query(),
        req.query_param("id"),
    );
    let _ = (
        req.cookie("formwarden"),
        req.content_type(),
        req.wants_json(),
    );
    let _ = (req.wants_image(), req.is_https(), req.header("Referer"));
    let _ = req.sibling_url("contact", "captcha");
    const LIMIT: usize = 4096;
    if req.read_body(&mut body, LIMIT).is_ok() {
        let len: usize = req
            .var("CONTENT_LENGTH")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(usize::MAX);
        assert!(len <= LIMIT, "a body above the limit was read");
    }
}

/// What the FastCGI handler answers: the request's variable count and body length, so the
/// answer depends on what the reader decoded.
fn echo(req: Request, body: &mut dyn Read) -> Response {
    let mut got = Vec::new();
    let read = body.read_to_end(&mut got);
    assert!(
        got.len() <= FASTCGI_STDIN,
        "more body than the buffer holds"
    );
    let _ = req.method();
    Response::new(if read.is_ok() { 200 } else { 400 })
}

/// The fuzzer's bounds on one connection: small, so that its inputs reach the overflow paths.
const FASTCGI_STDIN: usize = 2048;

/// One FastCGI connection's bytes through the real record reader; the answer must be a
/// well-formed stream of version-1 records.
pub fn fastcgi(data: &[u8]) {
    let limits = ResponderLimits {
        max_params_bytes: 1024,
        max_stdin_bytes: FASTCGI_STDIN,
        max_discard_bytes: 8192,
        max_stray_records: 16,
        ..ResponderLimits::default()
    };
    let (out, _closed) = fuzz_connection(data, echo, &limits);
    let mut rest = out.as_slice();
    while !rest.is_empty() {
        assert!(rest.len() >= 8, "an answer ends inside a record header");
        assert_eq!(rest[0], 1, "an answer record is not version 1");
        let len = usize::from(u16::from_be_bytes([rest[4], rest[5]])) + usize::from(rest[6]);
        assert!(rest.len() >= 8 + len, "an answer ends inside a record");
        rest = &rest[8 + len..];
    }
}

/// Config text through the real parser and its checks (no file is read). A refused text
/// must name the file and a key, and a line that exists; an accepted one must hold only
/// what the rest of the code relies on without checking again: profile names that are
/// safe file names, header and page texts without control characters, mailboxes the mail
/// library takes, a salt that is long and varied, a stylesheet URL that cannot leave its
/// attribute. Parsing is deterministic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz/config.toml");
    let c = match Config::parse(text, path) {
        Ok(c) => c,
        Err(e) => return config_refused(text, e),
    };
    let again = Config::parse(text, path).expect("the same text parses twice");
    assert_eq!(
        format!("{c:?}"),
        format!("{again:?}"),
        "parsing is not deterministic"
    );
    assert_eq!(c.path, path);
    assert!(c.input_files().contains(&c.path));

    assert!(c.ip_salt.trim().len() >= formwarden::config::MIN_SALT_LEN);
    assert!(!c.ip_salt.contains("CHANGE-ME"));
    let names = c.tokens.profiles.keys().chain([&c.tokens.admin_profile]);
    for name in names {
        assert!(
            check_profile_name(name).is_ok(),
            "profile {name:?} accepted"
        );
        assert!(!name.contains(['/', '.', '\\']) && name.len() <= 32);
    }
    if let Some(h) = &c.tokens.bootstrap_sha256 {
        assert!(h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    }

    let mail = &c.mail;
    let texts = [&c.site_name, &mail.subject_prefix, &mail.from];
    for t in texts.into_iter().chain(&mail.to) {
        assert!(
            !t.chars().any(char::is_control),
            "control character in {t:?}"
        );
    }
    assert!(!mail.to.is_empty());
    for m in mail.to.iter().chain([&mail.from]) {
        assert!(mail_check(m).is_ok(), "mailbox {m:?} accepted");
    }
    if let Transport::Smtp(s) = &mail.transport {
        assert!(!s.host.is_empty() && !s.host.chars().any(char::is_control));
        assert!(!s.hello_name.chars().any(char::is_control));
        assert!(s.port >= 1);
        assert_eq!(s.username.is_some(), s.password.is_some());
        if s.security == SmtpSecurity::Plain {
            assert!(
                formwarden::net::is_loopback_host(&s.host),
                "plain SMTP to {}",
                s.host
            );
        }
    }
    if let Some(url) = &c.stylesheet {
        assert!(url.starts_with('/') && !url.starts_with("//") || url.starts_with("https://"));
        assert!(!url.contains(['"', '\'', '<', '>', '`', ' ', '\\']));
    }

    // Reached only when the library is built with `redis` (the replay in CI's test run).
    if let formwarden::store::Backend::Redis(r) = &c.store {
        let prefix_ok = |b: u8| b.is_ascii_alphanumeric() || b"_-:.{}".contains(&b);
        assert!(r.prefix.bytes().all(prefix_ok), "prefix {:?}", r.prefix);
        assert!(!r.url.chars().any(char::is_control));
        let tls = r.url.starts_with("rediss://") || r.url.starts_with("valkeys://");
        assert!(r.ca_file.is_none() || tls, "a CA file for {}", r.url);
        assert!(c.input_files().len() == 3 + usize::from(r.ca_file.is_some()));
    }

    // The ranges the rest of the code divides by, sleeps for or allocates from.
    assert!((4..=8).contains(&c.captcha_length));
    assert!(c.captcha_max_attempts >= 1 && c.captcha_max_get >= 1 && c.contact_max_post >= 1);
    assert!(!c.rate_limit_window.is_zero() && !c.captcha_lifetime.is_zero());
    assert!(!c.lock_wait.is_zero() && !c.lock_poll.is_zero());
    assert!(c.request_timeout.as_secs() >= 2);
    assert!((1024..=1024 * 1024).contains(&c.max_body_bytes));
    assert!(c.max_windows >= 256 && c.max_challenges >= 256);
    assert!((1..=28).contains(&c.spam.pow_bits) && c.spam.pow_extra_bits <= 8);
    assert!(c.mail.max_attempts >= 1 && c.mail.max_age.as_secs() >= 3600);
    for p in c.tokens.profiles.values() {
        assert!(p.max_tokens >= 1 && p.lifetime.is_none_or(|l| !l.is_zero()));
    }
}

/// What a refused config must tell the operator: which file, which key (or `?` when even
/// the line holds none), and, when it points at a place, a line the text has.
fn config_refused(text: &str, e: formwarden::Error) {
    let formwarden::Error::ConfigInvalid { path, key, message } = &e else {
        panic!("config text refused with a non-config error: {e:?}");
    };
    assert_eq!(path, Path::new("fuzz/config.toml"));
    assert!(!key.is_empty() && !message.is_empty());
    let shown = e.to_string();
    assert!(
        shown.contains("fuzz/config.toml"),
        "error does not name the file: {shown}"
    );
    if let Some(rest) = message.strip_prefix("line ")
        && let Some((line, _)) = rest.split_once(',')
        && let Ok(line) = line.parse::<usize>()
    {
        assert!(
            line >= 1 && line <= text.lines().count() + 1,
            "line {line} of {message:?}"
        );
    }
}

/// Every state file format: the first byte picks the type, the rest is the file.
pub fn state(data: &[u8]) {
    let Some((&selector, file)) = data.split_first() else {
        return;
    };
    match selector % 6 {
        0 => round_trip::<formwarden::ratelimit::Window>(file),
        1 => round_trip::<formwarden::captcha::Stored>(file),
        2 => round_trip::<formwarden::tokens::TokenList>(file),
        3 => round_trip::<formwarden::quota::Sent>(file),
        4 => round_trip::<formwarden::spool::Message>(file),
        _ => round_trip::<formwarden::sweep::Marker>(file),
    }
}

/// A state value that parses and validates serializes, and that text parses and validates
/// again into a value that serializes to the same text.
fn round_trip<T: DeserializeOwned + Serialize + Validate>(file: &[u8]) {
    let Loaded::Valid(value) = state::parse::<T>(file, NOW) else {
        return;
    };
    let path = Path::new("fuzz/state.toml");
    let text = state::to_text(path, &value).expect("a parsed state value serializes");
    let Loaded::Valid(again) = state::parse::<T>(text.as_bytes(), NOW) else {
        panic!("a serialized state value does not parse again: {text:?}");
    };
    let text2 = state::to_text(path, &again).expect("a parsed state value serializes");
    assert_eq!(text, text2, "a state value changed across a round trip");
}

/// The preview's HTTP request head parser.
pub fn preview_head(data: &[u8]) {
    let (max_head, max_body) = formwarden_preview::FUZZ_LIMITS;
    let Ok(Some(head)) = formwarden_preview::fuzz_head(data) else {
        return;
    };
    assert!(head.end <= data.len() && head.end <= max_head);
    assert!(head.content_length.is_none_or(|n| n <= max_body));
    assert!(!head.target.is_empty() && head.target.bytes().all(|b| b.is_ascii_graphic()));
    assert!(head.version != "HTTP/1.1" || head.host_fields == 1);
    let _ = head.routed;
}
