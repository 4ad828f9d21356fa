//! The runtime configuration: `var/config/config.toml` is its only source. This module
//! parses it strictly (unknown keys are errors), fills in defaults, and checks every value
//! against its allowed range, naming the key in every message. It never reads settings from
//! the process environment: under CGI that environment partly comes from the visitor.

use crate::error::{Error, Result};
use crate::mail::{MailConfig, SmtpConfig, SmtpSecurity, Transport};
use crate::net::ProxyList;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The shortest `ip_salt` we accept. 32 characters of random text are far beyond guessing,
/// which is what keeps the hashed client keys from being reversed by trying all addresses.
pub const MIN_SALT_LEN: usize = 32;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Secret mixed into every client key and CAPTCHA hash.
    pub ip_salt: String,
    /// CAPTCHA images one client may fetch per window.
    pub captcha_max_get: u32,
    /// Contact posts one client may make per window.
    pub contact_max_post: u32,
    /// Length of the fixed rate-limit window.
    pub rate_limit_window: Duration,
    /// How long a challenge may be answered.
    pub captcha_lifetime: Duration,
    /// Wrong answers a challenge tolerates before it is burnt.
    pub captcha_max_attempts: u32,
    /// Characters per challenge.
    pub captcha_length: usize,
    /// How long a lock is waited for before the request is answered with 503.
    pub lock_wait: Duration,
    /// The longest single sleep between lock attempts while polling.
    pub lock_poll: Duration,
    /// The overall deadline of one request (see `deadline`).
    pub request_timeout: Duration,
    /// Ceiling on stored rate-limit windows (least recently active ones are evicted).
    pub max_windows: usize,
    /// Ceiling on outstanding CAPTCHA challenges (new ones are refused with a 503).
    pub max_challenges: usize,
    /// The largest request body accepted (413 above it).
    pub max_body_bytes: usize,
    /// Page language: `en`, `de` or `auto` (from `Accept-Language`).
    pub language: Language,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: ProxyList,
    /// Shown on pages and in the mail subject.
    pub site_name: String,
    /// The site's stylesheet, linked from the built-in pages (`stylesheet = "/style.css"`)
    /// so that error pages look like the site; an operator template replaces them wholly.
    pub stylesheet: Option<String>,
    /// Mail settings.
    pub mail: MailConfig,
    /// Token profiles.
    pub tokens: TokensConfig,
    /// Spam screening.
    pub spam: SpamConfig,
    /// Where rate limits, challenges and tokens are kept (`[store]`).
    pub store: crate::store::Backend,
    /// Where the config was read from, for messages.
    pub path: PathBuf,
}

/// Page language choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// Pick per request from `Accept-Language`, English when nothing matches.
    Auto,
    /// Always English.
    En,
    /// Always German.
    De,
}

/// Spam screening settings (`[spam]`, plus `var/config/blocked-words.txt` and
/// `var/config/blocked-domains.txt`).
#[derive(Debug, Clone)]
pub struct SpamConfig {
    /// The time trap: a POST sooner than this after its challenge was issued is not sent.
    pub min_fill: Duration,
    /// What a POST that came too soon gets.
    pub too_soon: TooSoon,
    /// The content rules.
    pub rules: crate::screen::Rules,
    /// Ceiling on quarantined messages; past it new suspects are refused with a 503.
    pub max_quarantine: usize,
    /// What passes a challenge: the characters, or proof-of-work from the page's script.
    pub challenge: crate::captcha::Policy,
    /// Proof-of-work difficulty for a client with an empty window (leading zero bits).
    pub pow_bits: u32,
    /// Bits added as the client's window of CAPTCHA requests fills.
    pub pow_extra_bits: u32,
}

/// What the time trap does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooSoon {
    /// A friendly "take a moment" page with everything refilled; the challenge stays
    /// usable.
    Retry,
    /// Quarantine the message.
    Quarantine,
}

/// The word list's file name in `var/config/`.
pub const BLOCKED_WORDS_FILE: &str = "blocked-words.txt";
/// The domain list's file name in `var/config/`.
pub const BLOCKED_DOMAINS_FILE: &str = "blocked-domains.txt";
/// The largest list file accepted.
const MAX_LIST_BYTES: u64 = 1024 * 1024;

/// Token service settings.
#[derive(Debug, Clone)]
pub struct TokensConfig {
    /// The profile whose tokens may rotate other profiles over HTTP.
    pub admin_profile: String,
    /// SHA-256 (hex) of a one-time secret that may issue the first admin token over HTTP
    /// while the admin profile has none (see `tokens::TokenService::bootstrap_accepts`).
    pub bootstrap_sha256: Option<String>,
    /// Configured profiles by name.
    pub profiles: BTreeMap<String, TokenProfile>,
}

/// One token profile.
#[derive(Debug, Clone)]
pub struct TokenProfile {
    /// Lifetime of a freshly issued token (`None`: until rotated away).
    pub lifetime: Option<Duration>,
    /// How long the previous tokens stay valid after a rotation.
    pub grace: Duration,
    /// Upper bound of tokens kept in the list.
    pub max_tokens: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    ip_salt: Option<String>,
    captcha_max_get: Option<i64>,
    contact_max_post: Option<i64>,
    rate_limit_window_seconds: Option<i64>,
    captcha_lifetime_seconds: Option<i64>,
    captcha_max_attempts: Option<i64>,
    captcha_length: Option<i64>,
    lock_wait_ms: Option<i64>,
    lock_poll_ms: Option<i64>,
    request_timeout_seconds: Option<i64>,
    max_windows: Option<i64>,
    max_challenges: Option<i64>,
    max_body_bytes: Option<i64>,
    language: Option<String>,
    trusted_proxies: Option<Vec<String>>,
    site_name: Option<String>,
    stylesheet: Option<String>,
    mail: Option<RawMail>,
    tokens: Option<RawTokens>,
    spam: Option<RawSpam>,
    store: Option<RawStore>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    backend: Option<String>,
    url: Option<String>,
    prefix: Option<String>,
    connect_timeout_ms: Option<i64>,
    command_timeout_ms: Option<i64>,
    ca_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSpam {
    min_fill_seconds: Option<i64>,
    too_soon: Option<String>,
    max_links: Option<i64>,
    links: Option<String>,
    gibberish_names: Option<String>,
    repeated_fields: Option<String>,
    blocked_words: Option<String>,
    blocked_domains: Option<String>,
    max_quarantine: Option<i64>,
    challenge: Option<String>,
    pow_bits: Option<i64>,
    pow_extra_bits: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMail {
    from: Option<String>,
    to: Option<Vec<String>>,
    subject_prefix: Option<String>,
    transport: Option<String>,
    keep_sent: Option<i64>,
    max_attempts: Option<i64>,
    max_age_hours: Option<i64>,
    retry_backoff_seconds: Option<i64>,
    retry_after_answer: Option<bool>,
    max_per_hour: Option<i64>,
    max_per_day: Option<i64>,
    file: Option<RawFile>,
    sendmail: Option<RawSendmail>,
    smtp: Option<RawSmtp>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    dir: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSendmail {
    command: Option<String>,
    timeout_seconds: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    host: Option<String>,
    port: Option<i64>,
    security: Option<String>,
    username: Option<String>,
    password: Option<String>,
    ca_file: Option<String>,
    timeout_seconds: Option<i64>,
    hello_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    admin_profile: Option<String>,
    bootstrap_sha256: Option<String>,
    profiles: Option<BTreeMap<String, RawProfile>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    lifetime_seconds: Option<i64>,
    grace_seconds: Option<i64>,
    max_tokens: Option<i64>,
}

/// Checks one integer setting against its range, naming the key when it is off.
struct Checker<'a> {
    path: &'a Path,
}

impl Checker<'_> {
    /// One of a fixed set of words, or an error naming the key and the allowed words.
    fn choice<T: Copy>(
        &self,
        key: &str,
        v: Option<&str>,
        default: &str,
        options: &[(&str, T)],
    ) -> Result<T> {
        let v = v.unwrap_or(default);
        options
            .iter()
            .find(|(word, _)| *word == v)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                let words: Vec<&str> = options.iter().map(|(w, _)| *w).collect();
                Error::config(
                    self.path,
                    key,
                    format!("`{v}` is not one of {}", words.join(", ")),
                )
            })
    }

    fn int(&self, key: &str, v: Option<i64>, default: i64, min: i64, max: i64) -> Result<i64> {
        let v = v.unwrap_or(default);
        if v < min || v > max {
            return Err(Error::config(
                self.path,
                key,
                format!("{v} is out of range (allowed {min} to {max})"),
            ));
        }
        Ok(v)
    }
    fn secs(
        &self,
        key: &str,
        v: Option<i64>,
        default: i64,
        min: i64,
        max: i64,
    ) -> Result<Duration> {
        Ok(Duration::from_secs(
            self.int(key, v, default, min, max)? as u64
        ))
    }
    fn text(&self, key: &str, v: Option<String>, default: &str, max_len: usize) -> Result<String> {
        let v = v.unwrap_or_else(|| default.to_string());
        if v.chars().any(char::is_control) {
            return Err(Error::config(self.path, key, "contains control characters"));
        }
        if v.len() > max_len {
            return Err(Error::config(
                self.path,
                key,
                format!("longer than {max_len} bytes"),
            ));
        }
        Ok(v)
    }
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config> {
        let text = match crate::fsio::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::ConfigMissing {
                    path: path.to_path_buf(),
                });
            }
            Err(e) => return Err(Error::io("read", path, e)),
        };
        let mut config = Config::parse(&text, path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        config.spam.rules.word_list = read_list(&dir.join(BLOCKED_WORDS_FILE))?;
        config.spam.rules.domain_list = read_list(&dir.join(BLOCKED_DOMAINS_FILE))?;
        Ok(config)
    }

    /// Every file [`Config::load`] reads for the config at `path`, before knowing what it
    /// says: the file itself and the two list files beside it.
    pub fn files_read_for(path: &Path) -> [PathBuf; 3] {
        let dir = path.parent().unwrap_or(Path::new("."));
        [
            path.to_path_buf(),
            dir.join(BLOCKED_WORDS_FILE),
            dir.join(BLOCKED_DOMAINS_FILE),
        ]
    }

    /// Every file this config was built from or makes the process read when its services
    /// open: [`Config::files_read_for`] plus the store's CA file. A process that keeps the
    /// config (a FastCGI responder) builds it again when any of them changes.
    pub fn input_files(&self) -> Vec<PathBuf> {
        let mut files = Config::files_read_for(&self.path).to_vec();
        if let crate::store::Backend::Redis(redis) = &self.store
            && let Some(ca) = &redis.ca_file
        {
            files.push(ca.clone());
        }
        files
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let raw = deserialize(text, path)?;
        let c = Checker { path };

        let ip_salt = check_salt(path, raw.ip_salt)?;

        let language = c.choice(
            "language",
            raw.language.as_deref(),
            "auto",
            &[
                ("auto", Language::Auto),
                ("en", Language::En),
                ("de", Language::De),
            ],
        )?;
        let trusted_proxies = ProxyList::parse(&raw.trusted_proxies.unwrap_or_default())
            .map_err(|m| Error::config(path, "trusted_proxies", m))?;
        let lock_wait =
            Duration::from_millis(c.int("lock_wait_ms", raw.lock_wait_ms, 300, 10, 30_000)? as u64);
        let lock_poll =
            Duration::from_millis(c.int("lock_poll_ms", raw.lock_poll_ms, 25, 1, 1_000)? as u64);
        let request_timeout = c.secs(
            "request_timeout_seconds",
            raw.request_timeout_seconds,
            30,
            2,
            600,
        )?;
        let max_windows = c.int("max_windows", raw.max_windows, 100_000, 256, 10_000_000)? as usize;
        let max_challenges =
            c.int("max_challenges", raw.max_challenges, 20_000, 256, 1_000_000)? as usize;

        Ok(Config {
            ip_salt,
            captcha_max_get: c.int("captcha_max_get", raw.captcha_max_get, 30, 1, 1_000_000)?
                as u32,
            contact_max_post: c.int("contact_max_post", raw.contact_max_post, 5, 1, 1_000_000)?
                as u32,
            rate_limit_window: c.secs(
                "rate_limit_window_seconds",
                raw.rate_limit_window_seconds,
                3600,
                1,
                7 * 86_400,
            )?,
            captcha_lifetime: c.secs(
                "captcha_lifetime_seconds",
                raw.captcha_lifetime_seconds,
                900,
                1,
                86_400,
            )?,
            captcha_max_attempts: c.int(
                "captcha_max_attempts",
                raw.captcha_max_attempts,
                3,
                1,
                20,
            )? as u32,
            captcha_length: c.int("captcha_length", raw.captcha_length, 5, 4, 8)? as usize,
            lock_wait,
            lock_poll,
            request_timeout,
            max_windows,
            max_challenges,
            max_body_bytes: c.int(
                "max_body_bytes",
                raw.max_body_bytes,
                32 * 1024,
                1024,
                1024 * 1024,
            )? as usize,
            language,
            trusted_proxies,
            site_name: c.text("site_name", raw.site_name, "formwarden", 200)?,
            stylesheet: match raw.stylesheet {
                None => None,
                Some(url) => {
                    Some(check_stylesheet(&url).map_err(|m| Error::config(path, "stylesheet", m))?)
                }
            },
            mail: parse_mail(&c, raw.mail)?,
            tokens: parse_tokens(&c, raw.tokens)?,
            spam: parse_spam(&c, raw.spam)?,
            store: parse_store(&c, raw.store, lock_wait)?,
            path: path.to_path_buf(),
        })
    }
}

/// The site's stylesheet URL must be a path on the site or an https URL without anything
/// that could end the attribute it is written into.
fn check_stylesheet(url: &str) -> std::result::Result<String, &'static str> {
    let ok_start = url.starts_with('/') && !url.starts_with("//") || url.starts_with("https://");
    if !ok_start {
        return Err("must start with / (a path on this site) or https://");
    }
    if url.len() > 500
        || url
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "\"'<>`\\".contains(c))
    {
        return Err(
            "must be a plain URL: no spaces, quotes or angle brackets, at most 500 characters",
        );
    }
    Ok(url.to_string())
}

/// One of the operator's list files; a missing file is an empty list.
fn read_list(path: &Path) -> Result<Vec<String>> {
    let text = match crate::fsio::read_to_string_at_most(path, MAX_LIST_BYTES) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    if text.len() as u64 > MAX_LIST_BYTES {
        return Err(Error::config(
            path,
            "(list file)",
            format!("larger than {MAX_LIST_BYTES} bytes"),
        ));
    }
    Ok(crate::screen::parse_list(&text))
}

fn parse_spam(c: &Checker<'_>, raw: Option<RawSpam>) -> Result<SpamConfig> {
    use crate::screen::Action;
    let raw = raw.unwrap_or_default();
    let actions = [
        ("reject", Action::Reject),
        ("quarantine", Action::Quarantine),
        ("allow", Action::Allow),
    ];
    let action = |key: &str, v: Option<String>| c.choice(key, v.as_deref(), "quarantine", &actions);
    Ok(SpamConfig {
        min_fill: c.secs("spam.min_fill_seconds", raw.min_fill_seconds, 3, 0, 600)?,
        too_soon: c.choice(
            "spam.too_soon",
            raw.too_soon.as_deref(),
            "retry",
            &[
                ("retry", TooSoon::Retry),
                ("quarantine", TooSoon::Quarantine),
            ],
        )?,
        rules: crate::screen::Rules {
            max_links: c.int("spam.max_links", raw.max_links, 2, 0, 1000)? as usize,
            links: action("spam.links", raw.links)?,
            gibberish_names: action("spam.gibberish_names", raw.gibberish_names)?,
            repeated_fields: action("spam.repeated_fields", raw.repeated_fields)?,
            blocked_words: action("spam.blocked_words", raw.blocked_words)?,
            blocked_domains: action("spam.blocked_domains", raw.blocked_domains)?,
            word_list: Vec::new(),
            domain_list: Vec::new(),
        },
        max_quarantine: c.int(
            "spam.max_quarantine",
            raw.max_quarantine,
            1000,
            1,
            1_000_000,
        )? as usize,
        challenge: c.choice(
            "spam.challenge",
            raw.challenge.as_deref(),
            "image",
            &crate::captcha::Policy::NAMES,
        )?,
        pow_bits: c.int("spam.pow_bits", raw.pow_bits, 18, 1, 28)? as u32,
        pow_extra_bits: c.int("spam.pow_extra_bits", raw.pow_extra_bits, 4, 0, 8)? as u32,
    })
}

/// `[store]`: files (the default) or a shared Redis. A Redis backend in a build without
/// the `redis` feature is refused here, so that `--check` and every request say so.
fn parse_store(
    c: &Checker<'_>,
    raw: Option<RawStore>,
    lock_wait: Duration,
) -> Result<crate::store::Backend> {
    use crate::store::{Backend, RedisConfig};
    let raw = raw.unwrap_or_default();
    let redis = c.choice(
        "store.backend",
        raw.backend.as_deref(),
        "files",
        &[("files", false), ("redis", true)],
    )?;
    if !redis {
        if raw.url.is_some() || raw.prefix.is_some() || raw.ca_file.is_some() {
            return Err(Error::config(
                c.path,
                "store.url",
                "only used with backend = \"redis\"",
            ));
        }
        return Ok(Backend::Files);
    }
    if !cfg!(feature = "redis") {
        return Err(crate::store::not_built(c.path));
    }
    let url = c.text("store.url", raw.url, "redis://127.0.0.1:6379/0", 1000)?;
    let schemes = [
        "redis://",
        "rediss://",
        "unix:",
        "redis+unix:",
        "valkey://",
        "valkeys://",
    ];
    if !schemes.iter().any(|s| url.starts_with(s)) {
        return Err(Error::config(
            c.path,
            "store.url",
            "must start with redis:// or rediss:// (TLS) or unix: (a socket path)",
        ));
    }
    let prefix = c.text("store.prefix", raw.prefix, "formwarden:", 64)?;
    if !prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-:.{}".contains(&b))
    {
        return Err(Error::config(
            c.path,
            "store.prefix",
            "may hold only letters, digits and _ - : . { }",
        ));
    }
    let ms = |key: &str, v: Option<i64>, default: i64| -> Result<Duration> {
        Ok(Duration::from_millis(
            c.int(key, v, default, 1, 30_000)? as u64
        ))
    };
    if raw.ca_file.is_some() && !url.starts_with("rediss://") && !url.starts_with("valkeys://") {
        return Err(Error::config(
            c.path,
            "store.ca_file",
            "only used with a rediss:// (TLS) url",
        ));
    }
    Ok(Backend::Redis(RedisConfig {
        ca_file: raw.ca_file.map(std::path::PathBuf::from),
        url,
        prefix,
        connect_timeout: ms("store.connect_timeout_ms", raw.connect_timeout_ms, 250)?,
        command_timeout: ms(
            "store.command_timeout_ms",
            raw.command_timeout_ms,
            lock_wait.as_millis() as i64,
        )?,
    }))
}

/// The config text as TOML, or an error that names the key (or the line and column of a
/// syntax error) so that the operator can find it.
fn deserialize(text: &str, path: &Path) -> Result<Raw> {
    toml::from_str(text).map_err(|e| {
        let mut message = e.message().to_string();
        // Every parse error points at a place; line and column let the operator find
        // it even when no key can be named (a syntax error).
        if let Some(span) = e.span() {
            let (line, column) = line_and_column(text, span.start);
            message = format!("line {line}, column {column}: {message}");
        }
        // toml names unknown keys in the message; for type errors the key is the one
        // on the line the span points at, so we extract it for the operator.
        let key = e
            .span()
            .and_then(|s| key_at(text, s.start))
            .unwrap_or_else(|| unknown_key(&message).unwrap_or_else(|| "?".into()));
        Error::config(path, key, message)
    })
}

/// `ip_salt`: required, long, not the example value, and random-looking, since it is what
/// keeps stored client keys from being reversed into addresses.
fn check_salt(path: &Path, ip_salt: Option<String>) -> Result<String> {
    let ip_salt = match ip_salt {
        None => {
            return Err(Error::config(
                path,
                "ip_salt",
                "is required: set it to at least 32 random characters, e.g. the output of \
                 `head -c 32 /dev/urandom | base64`",
            ));
        }
        Some(s) => s,
    };
    if ip_salt.trim().len() < MIN_SALT_LEN {
        return Err(Error::config(
            path,
            "ip_salt",
            format!("is too short: at least {MIN_SALT_LEN} random characters are needed"),
        ));
    }
    if ip_salt.contains("CHANGE-ME") {
        return Err(Error::config(
            path,
            "ip_salt",
            "still holds the example value: replace it with random characters",
        ));
    }
    let distinct: std::collections::BTreeSet<char> = ip_salt.chars().collect();
    if distinct.len() < 8 {
        return Err(Error::config(
            path,
            "ip_salt",
            "is not random: too few distinct characters",
        ));
    }
    Ok(ip_salt)
}

fn parse_mail(c: &Checker<'_>, raw: Option<RawMail>) -> Result<MailConfig> {
    let path = c.path;
    let raw = raw.unwrap_or_default();
    let from = c.text(
        "mail.from",
        raw.from,
        "formwarden <formwarden@localhost>",
        320,
    )?;
    crate::mail::check_mailbox(&from).map_err(|m| Error::config(path, "mail.from", m))?;
    let to = parse_recipients(c, raw.to)?;
    let transport = parse_transport(
        c,
        raw.transport.as_deref(),
        raw.file,
        raw.sendmail,
        raw.smtp,
    )?;
    // 0 (the default) means no limit.
    let per = |key: &str, v: Option<i64>| -> Result<Option<u32>> {
        Ok(match c.int(key, v, 0, 0, 1_000_000)? {
            0 => None,
            n => Some(n as u32),
        })
    };
    let max_per_hour = per("mail.max_per_hour", raw.max_per_hour)?;
    let max_per_day = per("mail.max_per_day", raw.max_per_day)?;
    Ok(MailConfig {
        retry_after_answer: raw.retry_after_answer.unwrap_or(true),
        max_per_hour,
        max_per_day,
        from,
        to,
        subject_prefix: c.text("mail.subject_prefix", raw.subject_prefix, "[Contact] ", 100)?,
        transport,
        keep_sent: c.int("mail.keep_sent", raw.keep_sent, 0, 0, 100_000)? as usize,
        max_attempts: c.int("mail.max_attempts", raw.max_attempts, 10, 1, 1000)? as u32,
        max_age: c
            .secs(
                "mail.max_age_hours",
                raw.max_age_hours.map(|h| h.saturating_mul(3600)),
                72 * 3600,
                3600,
                90 * 86_400,
            )
            .map_err(|_| {
                Error::config(
                    path,
                    "mail.max_age_hours",
                    "is out of range (allowed 1 to 2160)",
                )
            })?,
        retry_backoff: c.secs(
            "mail.retry_backoff_seconds",
            raw.retry_backoff_seconds,
            60,
            0,
            86_400,
        )?,
    })
}

/// `mail.to`: at least one recipient, each a mailbox the mail library accepts.
fn parse_recipients(c: &Checker<'_>, to: Option<Vec<String>>) -> Result<Vec<String>> {
    let to = to.unwrap_or_else(|| vec!["owner@localhost".to_string()]);
    if to.is_empty() {
        return Err(Error::config(
            c.path,
            "mail.to",
            "needs at least one recipient",
        ));
    }
    for t in &to {
        c.text("mail.to", Some(t.clone()), "", 320)?;
        crate::mail::check_mailbox(t).map_err(|m| Error::config(c.path, "mail.to", m))?;
    }
    Ok(to)
}

/// `mail.transport` and the section of the transport it names.
fn parse_transport(
    c: &Checker<'_>,
    transport: Option<&str>,
    file: Option<RawFile>,
    sendmail: Option<RawSendmail>,
    smtp: Option<RawSmtp>,
) -> Result<Transport> {
    let path = c.path;
    Ok(match transport.unwrap_or("file") {
        "file" => Transport::File {
            dir: PathBuf::from(c.text(
                "mail.file.dir",
                file.and_then(|f| f.dir),
                "var/mail-out",
                4096,
            )?),
        },
        "sendmail" => {
            let s = sendmail.unwrap_or_default();
            Transport::Sendmail {
                command: PathBuf::from(c.text(
                    "mail.sendmail.command",
                    s.command,
                    "/usr/sbin/sendmail",
                    4096,
                )?),
                timeout: c.secs(
                    "mail.sendmail.timeout_seconds",
                    s.timeout_seconds,
                    10,
                    1,
                    300,
                )?,
            }
        }
        "smtp" => Transport::Smtp(parse_smtp(c, smtp)?),
        other => {
            return Err(Error::config(
                path,
                "mail.transport",
                format!("`{other}` is not one of file, sendmail, smtp"),
            ));
        }
    })
}

/// The `[mail.smtp]` section, required when `transport = "smtp"`.
fn parse_smtp(c: &Checker<'_>, smtp: Option<RawSmtp>) -> Result<SmtpConfig> {
    let path = c.path;
    let s = smtp.ok_or_else(|| {
        Error::config(
            path,
            "mail.smtp",
            "transport = \"smtp\" needs a [mail.smtp] section",
        )
    })?;
    let host = c.text("mail.smtp.host", s.host, "", 253)?;
    if host.is_empty() {
        return Err(Error::config(
            path,
            "mail.smtp.host",
            "is required for SMTP",
        ));
    }
    let security = c.choice(
        "mail.smtp.security",
        s.security.as_deref(),
        "starttls",
        &[
            ("starttls", SmtpSecurity::StartTls),
            ("tls", SmtpSecurity::Tls),
            ("plain", SmtpSecurity::Plain),
        ],
    )?;
    if security == SmtpSecurity::Plain && !crate::net::is_loopback_host(&host) {
        return Err(Error::config(
            path,
            "mail.smtp.security",
            "plain (unencrypted) SMTP is only allowed towards a loopback address",
        ));
    }
    let default_port = match security {
        SmtpSecurity::Tls => 465,
        SmtpSecurity::StartTls => 587,
        SmtpSecurity::Plain => 25,
    };
    if s.username.is_some() != s.password.is_some() {
        return Err(Error::config(
            path,
            "mail.smtp.username",
            "username and password must be set together",
        ));
    }
    Ok(SmtpConfig {
        port: c.int("mail.smtp.port", s.port, default_port, 1, 65_535)? as u16,
        security,
        username: s.username,
        password: s.password,
        ca_file: s.ca_file.map(PathBuf::from),
        timeout: c.secs("mail.smtp.timeout_seconds", s.timeout_seconds, 10, 1, 300)?,
        hello_name: c.text("mail.smtp.hello_name", s.hello_name, "localhost", 253)?,
        host,
    })
}

fn parse_tokens(c: &Checker<'_>, raw: Option<RawTokens>) -> Result<TokensConfig> {
    let raw = raw.unwrap_or_default();
    let mut profiles = BTreeMap::new();
    for (name, p) in raw.profiles.unwrap_or_default() {
        let key = format!("tokens.profiles.{name}");
        check_profile_name(&name).map_err(|m| Error::config(c.path, key.clone(), m))?;
        let lifetime = c.int(
            &format!("{key}.lifetime_seconds"),
            p.lifetime_seconds,
            0,
            0,
            10 * 365 * 86_400,
        )?;
        profiles.insert(
            name,
            TokenProfile {
                lifetime: (lifetime > 0).then(|| Duration::from_secs(lifetime as u64)),
                grace: c.secs(
                    &format!("{key}.grace_seconds"),
                    p.grace_seconds,
                    86_400,
                    0,
                    365 * 86_400,
                )?,
                max_tokens: c.int(&format!("{key}.max_tokens"), p.max_tokens, 16, 1, 10_000)?
                    as usize,
            },
        );
    }
    let admin_profile = c.text("tokens.admin_profile", raw.admin_profile, "admin", 32)?;
    check_profile_name(&admin_profile)
        .map_err(|m| Error::config(c.path, "tokens.admin_profile", m))?;
    let bootstrap_sha256 = match raw.bootstrap_sha256 {
        None => None,
        Some(h) => {
            let h = h.trim().to_ascii_lowercase();
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::config(
                    c.path,
                    "tokens.bootstrap_sha256",
                    "must be the 64 hex digits of a SHA-256 digest (printf %s 'SECRET' | sha256sum)",
                ));
            }
            Some(h)
        }
    };
    Ok(TokensConfig {
        admin_profile,
        bootstrap_sha256,
        profiles,
    })
}

/// The 1-based line and column (in characters) of byte offset `at` in `text`.
fn line_and_column(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..text.floor_char_boundary(at.min(text.len()))];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The key written on the line that contains byte offset `at`, if the line is `key = …`,
/// dotted with the section header above it (`[mail.smtp]` + `port` is `mail.smtp.port`),
/// as range errors name it.
fn key_at(text: &str, at: usize) -> Option<String> {
    let before = &text[..text.floor_char_boundary(at.min(text.len()))];
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    // The nearest header line above; a `[` inside a multi-line string could be taken for
    // one, which only changes the name in a message about a file that does not parse.
    let section = before[..start].lines().rev().find_map(|l| {
        let l = l.trim();
        let inner = l.strip_prefix('[')?.split(']').next()?;
        Some(inner.trim_start_matches('[').replace(['"', '\'', ' '], ""))
    });
    Some(match section {
        Some(s) if !s.is_empty() => format!("{s}.{key}"),
        _ => key.to_string(),
    })
}

/// The key named in toml's "unknown field `x`" message.
fn unknown_key(message: &str) -> Option<String> {
    let rest = message.split_once("unknown field `")?.1;
    Some(rest.split_once('`')?.0.to_string())
}

/// Checks a token profile name (the config's `[tokens.profiles.NAME]`, and every name a
/// request or command line gives): 1 to 32 of `[a-z0-9_-]`, starting with a letter or digit.
pub fn check_profile_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "profile name {name:?} must be 1 to 32 characters of a-z, 0-9, _ and -, starting with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: &str = "ip_salt = \"q8Jr2mX0vT5nL7wZ1cB4kH9pF3sD6gA0eY2uI8oR\"\n";

    fn parse(extra: &str) -> Result<Config> {
        Config::parse(&format!("{SALT}{extra}"), Path::new("config.toml"))
    }

    fn key_of(r: Result<Config>) -> String {
        match r {
            Err(Error::ConfigInvalid { key, .. }) => key,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    /// Issue 7, item 9: a syntax error names the line and column it is on.
    #[test]
    fn a_syntax_error_names_its_line_and_column() {
        let r = Config::parse(
            "ip_salt = \"q8Jr2mX0vT5nL7wZ1cB4kH9pF3sD6gA0eY2uI8oR\"\n\n  = 5\n",
            Path::new("c.toml"),
        );
        let text = r.expect_err("a syntax error").to_string();
        assert!(text.contains("line 3, column 3"), "{text}");
        let r = Config::parse("ip_salt = \"äöü\" x\n", Path::new("c.toml"));
        let text = r.expect_err("a syntax error").to_string();
        assert!(text.contains("line 1, column 17"), "{text}");
    }

    #[test]
    fn defaults_follow_the_design() {
        let c = parse("").expect("valid");
        assert_eq!(c.lock_wait, Duration::from_millis(300));
        assert_eq!(c.lock_poll, Duration::from_millis(25));
        assert_eq!(c.captcha_max_get, 30);
    }

    #[test]
    fn missing_short_and_example_salts_are_refused_by_name() {
        let r = Config::parse("", Path::new("c"));
        assert_eq!(key_of(r), "ip_salt");
        let r = Config::parse("ip_salt = \"short\"", Path::new("c"));
        assert_eq!(key_of(r), "ip_salt");
        let r = Config::parse(&format!("ip_salt = \"{}\"", "a".repeat(40)), Path::new("c"));
        assert_eq!(key_of(r), "ip_salt");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        assert_eq!(key_of(parse("captcha_max_gett = 3\n")), "captcha_max_gett");
        assert_eq!(
            key_of(parse("captcha_max_get = \"many\"\n")),
            "captcha_max_get"
        );
        assert_eq!(key_of(parse("captcha_max_get = 0\n")), "captcha_max_get");
        assert_eq!(key_of(parse("lock_wait_ms = -5\n")), "lock_wait_ms");
        assert_eq!(
            key_of(parse("[mail]\nto = [\"a@b\\r\\nBcc: x@y\"]\n")),
            "mail.to"
        );
        assert_eq!(
            key_of(parse("[tokens.profiles.\"../x\"]\n")),
            "tokens.profiles.../x"
        );
    }

    /// A type error or an unknown key inside a section is named with its section, as
    /// range errors are (`mail.smtp.port`, not `port`), so that the operator finds the
    /// right one of several keys of that name.
    #[test]
    fn keys_inside_sections_are_named_with_their_section() {
        let smtp = "[mail]\ntransport = \"smtp\"\n[mail.smtp]\nhost = \"127.0.0.1\"\n";
        assert_eq!(
            key_of(parse(&format!("{smtp}port = \"x\"\n"))),
            "mail.smtp.port"
        );
        assert_eq!(
            key_of(parse("[mail.sendmail]\ntimeout_seconds = \"ten\"\n")),
            "mail.sendmail.timeout_seconds"
        );
        assert_eq!(key_of(parse("[spam]\nmax_linkz = 3\n")), "spam.max_linkz");
        assert_eq!(
            key_of(parse("[tokens.profiles.\"site-a\"]\nmax_tokens = \"2\"\n")),
            "tokens.profiles.site-a.max_tokens"
        );
        // Keys before any section header stay bare.
        assert_eq!(key_of(parse("lock_poll_ms = []\n")), "lock_poll_ms");
    }

    #[test]
    fn plain_smtp_is_loopback_only() {
        let r = parse(
            "[mail]\ntransport = \"smtp\"\n[mail.smtp]\nhost = \"mail.example.com\"\nsecurity = \"plain\"\n",
        );
        assert_eq!(key_of(r), "mail.smtp.security");
        assert!(parse("[mail]\ntransport = \"smtp\"\n[mail.smtp]\nhost = \"127.0.0.1\"\nsecurity = \"plain\"\n").is_ok());
    }
}
