//! The test harness: a throw-away runtime tree per test and a builder that runs the real
//! executables as CGI processes, the way a web server would (clean environment, RFC 3875
//! variables, body on stdin), and parses their answers.

pub mod faults;
pub mod ftp;
pub mod http;
pub mod net;
pub mod procs;
pub mod release;
pub mod servers;
pub mod smtp;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A salt that passes validation; tests that check privacy search for addresses, not it.
pub const SALT: &str = "t3stS4lt-0123456789abcdefghijklmnopqrstuvwxyz";

/// The hashed client key the executables derive from `addr` with the test salt.
pub fn client_key(addr: &str) -> String {
    formwarden::net::client_key(SALT, addr.parse().ok())
}

/// Checks a lock-timeout answer: 503, `Retry-After: 1`, the seed's message naming `key` in
/// the body, and an answer after the 300 ms bound but without hanging. Returns the message
/// so the caller can look for it in the log it has (process stderr, responder log).
pub fn assert_lock_timeout(a: &Answer, key: &formwarden::lock::LockKey) -> String {
    assert_lock_timeout_reply(a.status, a.header("retry-after"), &a.text(), a.elapsed, key)
}

/// [`assert_lock_timeout`] for an answer that came another way (through a web server):
/// its status, `Retry-After` header, body and how long the request took.
pub fn assert_lock_timeout_reply(
    status: u16,
    retry_after: Option<&str>,
    body: &str,
    elapsed: Duration,
    key: &formwarden::lock::LockKey,
) -> String {
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry_after, Some("1"));
    let expected = format!("Lock-Timeout nach 300ms: {}", key.as_str());
    assert!(body.contains(&expected), "body must name the key: {body}");
    assert!(
        !body.contains("/var/") && !body.contains("os error"),
        "a lock timeout shows the key, never a path: {body}"
    );
    // The bound is 300 ms: not an instant refusal, and no hang either.
    assert!(
        elapsed >= Duration::from_millis(300),
        "answered too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "took too long: {elapsed:?}"
    );
    expected
}

/// Asks `probe` every 10 ms until it has an answer or `limit` has passed; `None` when it
/// never had one. The limits callers give are margins for a loaded machine: the wait ends
/// at the first answer, and nothing is asserted about how long that took. A probe that can
/// tell early that the answer will never come (the process it waits for exited) answers
/// that instead of letting the wait run out.
pub fn wait_for<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(answer) = probe() {
            return Some(answer);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// [`wait_for`] a condition: true as soon as `ready` holds, false when it never did.
pub fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    wait_for(limit, || ready().then_some(())).is_some()
}

/// The test builds' clock switch (see `formwarden::state::now`).
pub const CLOCK_SKEW_ENV: &str = "FORMWARDEN_TEST_CLOCK_SKEW";

/// Path of one of the real executables.
pub fn exe(name: &str) -> PathBuf {
    match name {
        "captcha" => PathBuf::from(env!("CARGO_BIN_EXE_captcha")),
        "contact" => PathBuf::from(env!("CARGO_BIN_EXE_contact")),
        "tokens" => PathBuf::from(env!("CARGO_BIN_EXE_tokens")),
        "preview" => PathBuf::from(env!("CARGO_BIN_EXE_preview")),
        "spool" => PathBuf::from(env!("CARGO_BIN_EXE_spool")),
        other => panic!("no executable {other}"),
    }
}

/// A runtime tree in a temp folder with its own config.
pub struct Site {
    dir: tempfile::TempDir,
    /// Seconds the executables' clock runs ahead (test builds only), for every request and
    /// command of this site from now on.
    skew: std::cell::Cell<u64>,
}

impl Site {
    /// A site with the default test config plus `extra` TOML lines (top-level keys first).
    pub fn with(extra_top: &str, extra_sections: &str) -> Site {
        Site::build(extra_top, None, "", extra_sections)
    }

    /// A site with the default file transport into `var/mail-out` and `extra` more
    /// `[mail]` lines (`max_per_hour = 50\n`).
    pub fn with_mail_lines(extra: &str) -> Site {
        Site::build("", None, extra, "")
    }

    /// A site whose `[mail]` section (and its sub-tables) is `mail` instead of the default
    /// file transport into `var/mail-out`.
    pub fn with_mail(extra_top: &str, mail: &str) -> Site {
        Site::build(extra_top, Some(mail), "", "")
    }

    fn build(extra_top: &str, mail: Option<&str>, mail_lines: &str, extra_sections: &str) -> Site {
        let dir = tempfile::tempdir().expect("tempdir");
        let var = dir.path().join("var");
        make_var_dirs(&var);
        // Generous limits by default; a test that sets a key itself replaces the default.
        let defaults: String = ["captcha_max_get = 1000", "contact_max_post = 1000"]
            .iter()
            .filter(|d| !extra_top.contains(d.split(' ').next().unwrap_or("")))
            .map(|d| format!("{d}\n"))
            .collect();
        let mail = mail.map(str::to_string).unwrap_or_else(|| {
            format!(
                "[mail]\nfrom = \"Site <noreply@example.org>\"\nto = [\"owner@example.org\"]\ntransport = \"file\"\n{mail_lines}[mail.file]\ndir = \"{}\"\n",
                var.join("mail-out").display()
            )
        });
        // The time trap is off unless a test sets `[spam]` itself: the tests post the
        // moment they have a challenge, as no person could. Before `[mail]`, so that a
        // test replacing the mail settings from there on keeps it.
        let spam = if extra_sections.contains("[spam]") {
            ""
        } else {
            "[spam]\nmin_fill_seconds = 0\n"
        };
        let config = format!(
            "ip_salt = \"{SALT}\"\n{defaults}{extra_top}\n{spam}{mail}\n\
             [tokens.profiles.admin]\ngrace_seconds = 3600\n[tokens.profiles.deploy]\ngrace_seconds = 3600\nmax_tokens = 1000\n{extra_sections}\n"
        );
        std::fs::write(var.join("config/config.toml"), config).expect("write config");
        Site {
            dir,
            skew: std::cell::Cell::new(0),
        }
    }

    /// A site with the default test config.
    pub fn new() -> Site {
        Site::with("", "")
    }

    /// The runtime root (parent of `var/`).
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A path under `var/`.
    pub fn var(&self, rel: &str) -> PathBuf {
        self.root().join("var").join(rel)
    }

    /// Files in a folder under `var/` (names only, sorted, temp files included).
    pub fn ls(&self, rel: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.var(rel))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Every file under `var/`, as paths relative to it, sorted: a snapshot to compare.
    pub fn tree(&self) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, base, out);
                } else if let Ok(rel) = p.strip_prefix(base) {
                    out.push(rel.display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.var(""), &self.var(""), &mut out);
        out.sort();
        out
    }

    /// A request to executable `bin` with `method`.
    pub fn cgi(&self, bin: &str, method: &str) -> Cgi {
        let c = Cgi::new(self.root(), bin, method);
        match self.skew.get() {
            0 => c,
            s => c.var(CLOCK_SKEW_ENV, &s.to_string()),
        }
    }

    /// Lets the executables' clock run `secs` ahead of the real one from now on, so that
    /// lifetimes and windows expire without the test sleeping.
    pub fn advance_clock(&self, secs: u64) {
        self.skew.set(self.skew.get() + secs);
    }

    /// Runs the `tokens` command line.
    pub fn tokens_cli(&self, args: &[&str]) -> std::process::Output {
        self.cli("tokens", args)
    }

    /// Rotates token `profile` with the command line and returns the new token.
    pub fn rotate(&self, profile: &str) -> String {
        let out = self.tokens_cli(&["rotate", profile]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    }

    /// Runs an operator command (`tokens`, `spool`) against this site.
    pub fn cli(&self, bin: &str, args: &[&str]) -> std::process::Output {
        self.cli_command(bin, args)
            .output()
            .expect("run operator command")
    }

    /// The operator command `bin args` against this site, not yet started.
    pub fn cli_command(&self, bin: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(exe(bin));
        cmd.args(args)
            .env_clear()
            .env("FORMWARDEN_ROOT", self.root())
            .env(CLOCK_SKEW_ENV, self.skew.get().to_string())
            .stdin(Stdio::null());
        cmd
    }

    /// The stored rate-limit counter `field` (`captcha_get`, `contact_post`) of client
    /// `addr`, or `None` when that client has no window.
    pub fn stored_count(&self, addr: &str, field: &str) -> Option<u64> {
        let text = std::fs::read_to_string(self.window_path(addr)).ok()?;
        let v: toml::Table = toml::from_str(&text).expect("valid window");
        v[field].as_integer().map(|n| n as u64)
    }

    /// Fetches a CAPTCHA for `addr` and returns (challenge id, answer).
    pub fn challenge(&self, addr: &str) -> (String, String) {
        challenge_of(&self.cgi("captcha", "GET").remote_addr(addr).run())
    }

    /// The honest contact POST for challenge `id` solved with `answer` (`good_form`).
    pub fn contact_post(&self, id: &str, answer: &str) -> Cgi {
        self.cgi("contact", "POST")
            .captcha_cookie(id)
            .form(&good_form(answer))
    }

    /// Where client `addr`'s rate-limit window is stored (in its shard, see
    /// `formwarden::shard`).
    pub fn window_path(&self, addr: &str) -> PathBuf {
        formwarden::shard::path(&self.var("tmp/ratelimit"), &client_key(addr), ".toml")
    }

    /// Makes the default file transport fail (a file where its folder `var/mail-out`
    /// should be), or (`false`) work again: a mail server that is away.
    pub fn block_mail(&self, blocked: bool) {
        let transport = self.var("mail-out");
        if blocked {
            std::fs::remove_dir(&transport).expect("the empty mail folder");
            std::fs::write(&transport, "blocks delivery").expect("a file in its place");
        } else {
            std::fs::remove_file(&transport).expect("remove the file");
            std::fs::create_dir(&transport).expect("the folder again");
        }
    }

    /// Ids of the messages in spool folder `folder` (`new`, `failed`, `quarantine`, …),
    /// oldest first, temp files left out.
    pub fn spool_ids(&self, folder: &str) -> Vec<String> {
        self.ls(&format!("spool/{folder}"))
            .into_iter()
            .filter(|f| f.ends_with(".toml") && !f.starts_with('.'))
            .map(|f| f.trim_end_matches(".toml").to_string())
            .collect()
    }

    /// Asserts that answer `a` shows no path of this site (`what` names the case).
    pub fn assert_shows_no_path(&self, a: &Answer, what: &str) {
        assert!(
            !a.text().contains(&self.root().display().to_string()),
            "{what}: no server path shown: {}",
            a.text()
        );
    }

    /// Messages the file transport delivered (`.eml` files in `var/mail-out`).
    pub fn delivered(&self) -> usize {
        self.ls("mail-out")
            .iter()
            .filter(|f| f.ends_with(".eml"))
            .count()
    }

    /// Where challenge `id` is stored.
    pub fn challenge_path(&self, id: &str) -> PathBuf {
        formwarden::shard::path(&self.var("tmp/captcha"), id, ".toml")
    }

    /// Names of the files in a sharded folder under `var/` (`lock`, `tmp/captcha`,
    /// `tmp/ratelimit`): every shard's files together, sorted, temp files included.
    pub fn files(&self, rel: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .tree()
            .into_iter()
            .filter_map(|p| {
                let rest = p.strip_prefix(rel)?.strip_prefix('/')?;
                Some(rest.rsplit('/').next().unwrap_or(rest).to_string())
            })
            .collect();
        v.sort();
        v
    }

    /// Puts `var/` on a 256 KiB tmpfs of its own (with the site's folders and config), so
    /// that a test can fill it; unmounted when the guard drops.
    pub fn on_small_disk(&self) -> Tmpfs {
        let config = std::fs::read(self.var("config/config.toml")).expect("config");
        let fs = Tmpfs::mount(&self.var(""), "256k");
        make_var_dirs(&self.var(""));
        std::fs::write(self.var("config/config.toml"), &config).expect("config");
        fs
    }

    /// Fills the file system of `var/` to the last block; removing the returned file
    /// frees the space again.
    pub fn fill_disk(&self) -> PathBuf {
        use std::io::Write;
        let fill = self.var("fill");
        let mut f = std::fs::File::create(&fill).expect("fill file");
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        fill
    }

    /// Holds lock `key` from this test process, the way another request would, by the
    /// library's one lock runner.
    pub fn hold_lock(&self, key: &formwarden::lock::LockKey) -> formwarden::lock::LockGuard {
        formwarden::lock::LockRunner::new(
            self.var("lock"),
            Duration::from_secs(5),
            Duration::from_millis(5),
        )
        .acquire(key)
        .expect("hold lock")
    }
}

/// The folders of a runtime tree the tests use (the executables create missing ones too).
pub fn make_var_dirs(var: &Path) {
    let root = var.parent().expect("var/ has a parent");
    let dirs = formwarden::layout::Layout::new(root).state_dirs();
    for d in dirs
        .into_iter()
        .chain([var.join("config"), var.join("mail-out")])
    {
        std::fs::create_dir_all(&d).expect("mkdir");
    }
}

/// The `tokens.bootstrap_sha256` value for `secret`, as the operator computes it.
pub fn bootstrap_digest(secret: &str) -> String {
    use sha2::Digest;
    formwarden::random::hex(&sha2::Sha256::digest(secret.as_bytes()))
}

/// The nonce that solves challenge `id`'s puzzle of `bits` bits, by the service's own check
/// (`captcha::work_valid`); the browser test shows that the page's worker, written apart,
/// finds nonces this check accepts.
pub fn solve_pow(id: &str, bits: u32) -> String {
    (0u64..)
        .map(|n| n.to_string())
        .find(|n| formwarden::captcha::work_valid(id, n, bits))
        .unwrap_or_default()
}

/// The value at `path` in a JSON answer (`"id"`, or `"pow/bits"` inside an object), as
/// text (see [`json_text`]); empty when absent. Panics when the answer is not JSON: every
/// JSON answer of the executables must be.
pub fn json_field(json: &str, path: &str) -> String {
    let value: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"));
    value
        .pointer(&format!("/{path}"))
        .and_then(json_text)
        .unwrap_or_default()
}

/// A flat JSON value as text: a string's contents, a number or boolean as written; `None`
/// for an array or object.
pub fn json_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(_) | serde_json::Value::Object(_) => None,
        other => Some(other.to_string()),
    }
}

/// The (challenge id, answer) a CAPTCHA GET's answer carries (test builds only).
pub fn challenge_of(a: &Answer) -> (String, String) {
    assert_eq!(a.status, 200, "captcha GET: {}", a.text());
    let id = a.cookie("fw_captcha").expect("challenge cookie");
    let answer = a
        .header("x-formwarden-test-answer")
        .expect("test hook header")
        .to_string();
    (id, answer)
}

/// A valid contact form for challenge `(id, answer)`.
pub fn good_form(answer: &str) -> Vec<(&'static str, String)> {
    vec![
        ("name", "Ada Lovelace".to_string()),
        ("email", "ada@example.net".to_string()),
        ("subject", "Hello".to_string()),
        ("message", "Line one\r\nLine two".to_string()),
        ("captcha", answer.to_string()),
    ]
}

/// One CGI request to build and run.
#[derive(Clone)]
pub struct Cgi {
    bin: PathBuf,
    vars: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Cgi {
    /// A request to executable `bin` of the site at `root` (`Site::cgi` is the usual way).
    pub fn new(root: &Path, bin: &str, method: &str) -> Cgi {
        let mut vars = BTreeMap::new();
        for (k, v) in [
            ("GATEWAY_INTERFACE", "CGI/1.1"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("SERVER_NAME", "localhost"),
            ("SERVER_PORT", "80"),
            ("REMOTE_ADDR", "192.0.2.10"),
            ("QUERY_STRING", ""),
        ] {
            vars.insert(k.to_string(), v.to_string());
        }
        vars.insert("REQUEST_METHOD".into(), method.into());
        vars.insert("SCRIPT_NAME".into(), format!("/cgi-bin/{bin}"));
        vars.insert("FORMWARDEN_ROOT".into(), root.display().to_string());
        Cgi {
            bin: exe(bin),
            vars,
            body: Vec::new(),
        }
    }

    /// The meta-variables as they will be sent.
    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }

    /// The body as it will be sent.
    pub fn body_bytes(&self) -> &[u8] {
        &self.body
    }

    /// Sets a meta-variable.
    pub fn var(mut self, k: &str, v: &str) -> Cgi {
        self.vars.insert(k.into(), v.into());
        self
    }

    /// Removes a meta-variable.
    pub fn unset(mut self, k: &str) -> Cgi {
        self.vars.remove(k);
        self
    }

    /// Sets the client address.
    pub fn remote_addr(self, a: &str) -> Cgi {
        self.var("REMOTE_ADDR", a)
    }

    /// Sets a request header.
    pub fn header(self, name: &str, v: &str) -> Cgi {
        let k = format!("HTTP_{}", name.to_ascii_uppercase().replace('-', "_"));
        self.var(&k, v)
    }

    /// Sets the query string.
    pub fn query(self, q: &str) -> Cgi {
        self.var("QUERY_STRING", q)
    }

    /// Sends the CAPTCHA cookie.
    pub fn captcha_cookie(self, id: &str) -> Cgi {
        self.header("cookie", &format!("fw_captcha={id}"))
    }

    /// Sends a raw body with a content type.
    pub fn body(mut self, content_type: &str, body: &[u8]) -> Cgi {
        self.body = body.to_vec();
        self.vars.insert("CONTENT_TYPE".into(), content_type.into());
        self.vars
            .insert("CONTENT_LENGTH".into(), body.len().to_string());
        self
    }

    /// Sends an urlencoded form.
    pub fn form(self, fields: &[(&str, String)]) -> Cgi {
        let enc = serde_urlencoded::to_string(fields).expect("encode");
        self.body("application/x-www-form-urlencoded", enc.as_bytes())
    }

    /// Starts the process with a piped stdin and writes the body into it.
    fn start(&self) -> (Child, std::process::ChildStdin) {
        let mut child = Command::new(&self.bin)
            .env_clear()
            .envs(&self.vars)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn executable");
        let mut stdin = child.stdin.take().expect("stdin");
        // A process may answer (413, 405) without reading its body; a broken pipe is fine.
        let _ = stdin.write_all(&self.body);
        (child, stdin)
    }

    /// Starts the process without waiting (for concurrency tests); stdin is closed after
    /// the body, as web servers do.
    pub fn spawn(&self) -> Child {
        self.start().0
    }

    /// Starts the process, writes the body and keeps stdin open, as a web server may that
    /// does not close a CGI's input after the body. The caller holds the returned stdin.
    pub fn spawn_keeping_stdin(&self) -> (Child, std::process::ChildStdin) {
        self.start()
    }

    /// Runs the request to completion.
    pub fn run(&self) -> Answer {
        let t = Instant::now();
        let out = self.spawn().wait_with_output().expect("wait");
        Answer::parse(&out.stdout, &out.stderr, t.elapsed(), out.status.code())
    }
}

/// A parsed CGI answer.
#[derive(Debug)]
pub struct Answer {
    /// Status from the `Status:` header.
    pub status: u16,
    /// Headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
    /// What the process logged.
    pub stderr: String,
    /// Wall time of the process.
    pub elapsed: Duration,
    /// Exit code.
    pub code: Option<i32>,
}

impl Answer {
    /// Parses the raw output of a CGI process.
    pub fn parse(out: &[u8], err: &[u8], elapsed: Duration, code: Option<i32>) -> Answer {
        let split = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| (i, 4));
        let (end, sep) = split.unwrap_or_else(|| {
            panic!(
                "no header block in {:?} (stderr {})",
                String::from_utf8_lossy(out),
                String::from_utf8_lossy(err)
            )
        });
        let head = String::from_utf8_lossy(&out[..end]).to_string();
        let mut status = 200;
        let mut headers = Vec::new();
        for line in head.split("\r\n") {
            let (k, v) = line.split_once(':').expect("header line");
            let k = k.trim().to_ascii_lowercase();
            let v = v.trim().to_string();
            if k == "status" {
                status = v[..3].parse().expect("status code");
            }
            headers.push((k, v));
        }
        Answer {
            status,
            headers,
            body: out[end + sep..].to_vec(),
            stderr: String::from_utf8_lossy(err).into_owned(),
            elapsed,
            code,
        }
    }

    /// A header value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A cookie set by one of the `Set-Cookie` headers.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .find_map(|(_, sc)| {
                let (k, v) = sc.split(';').next()?.split_once('=')?;
                (k.trim() == name).then(|| v.trim().to_string())
            })
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Counts admitted (200), limited (429) and lock-timed-out (503 naming the lock) answers.
pub fn tally(answers: &[Answer]) -> (usize, usize, usize) {
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let limited = answers.iter().filter(|a| a.status == 429).count();
    let timeouts = answers
        .iter()
        .filter(|a| a.status == 503 && a.text().contains("Lock-Timeout"))
        .count();
    (ok, limited, timeouts)
}

/// Waits for many children and parses their answers.
pub fn collect(children: Vec<Child>) -> Vec<Answer> {
    children
        .into_iter()
        .map(|c| {
            let t = Instant::now();
            let out = c.wait_with_output().expect("wait");
            Answer::parse(&out.stdout, &out.stderr, t.elapsed(), out.status.code())
        })
        .collect()
}

/// Every file under `dir`, recursively.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A small tmpfs mounted over a folder for one test, unmounted on drop. Mounting needs
/// root, which the suite has (it installs its servers with apt-get as well).
pub struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    pub fn mount(at: &std::path::Path, size: &str) -> Tmpfs {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A test CA and a server certificate for 127.0.0.1/localhost signed by it.
pub fn test_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=formwarden test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}
