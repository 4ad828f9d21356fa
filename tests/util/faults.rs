//! The fault sweeps' common parts (tests/io_faults.rs, tests/crashes.rs): a fault at one
//! numbered I/O step of a real process (the library's filesystem seam, `fsio`, counts
//! them in test builds), the write paths as scenarios that can run with such a fault, and
//! the validator that checks a runtime tree afterwards.
//!
//! A scenario prepares a fresh site, runs one real process with the fault, judges what
//! that process answered and stored (old or new state, never a torn or lost one), and
//! then proves that the next requests work and that nothing accepted went missing.

use super::*;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// One injected fault.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Fail step N with EIO once.
    Once(u32),
    /// Fail step N and every later one.
    From(u32),
    /// SIGKILL the process before step N.
    Kill(u32),
    /// Fail step N and every later one with a named error (`ENOSPC`: the disk is full;
    /// `EACCES`: the permission went away).
    FromWith(u32, &'static str),
}

impl Fault {
    /// The environment variable that asks a test build for it.
    pub fn env(self) -> Vec<(&'static str, String)> {
        match self {
            Fault::Once(n) => vec![("FORMWARDEN_TEST_IO_FAULT", n.to_string())],
            Fault::From(n) => vec![("FORMWARDEN_TEST_IO_FAULT", format!("{n}+"))],
            Fault::Kill(n) => vec![("FORMWARDEN_TEST_IO_KILL", n.to_string())],
            Fault::FromWith(n, errno) => vec![
                ("FORMWARDEN_TEST_IO_FAULT", format!("{n}+")),
                ("FORMWARDEN_TEST_IO_ERRNO", errno.to_string()),
            ],
        }
    }

    /// Whether a run's log says that the fault was reached.
    pub fn fired(self, stderr: &str) -> bool {
        match self {
            Fault::Kill(_) => stderr.contains("fsio: SIGKILL at step"),
            _ => stderr.contains("fsio: injected "),
        }
    }

    /// Whether this is a kill.
    pub fn kills(self) -> bool {
        matches!(self, Fault::Kill(_))
    }
}

/// What one process did.
#[derive(Debug, Clone, Default)]
pub struct Ran {
    /// HTTP status of a CGI answer (`None`: no complete header block, or not a CGI).
    pub status: Option<u16>,
    /// Exit code (`None`: ended by a signal).
    pub code: Option<i32>,
    /// What it wrote to stdout (the CGI answer's body after its header block).
    pub stdout: String,
    /// What it logged.
    pub stderr: String,
}

impl Ran {
    /// What a finished process did; `cgi`: its stdout is a CGI answer to parse.
    pub fn from_output(out: &std::process::Output, cgi: bool) -> Ran {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (status, stdout) = if cgi {
            match text.split_once("\r\n\r\n") {
                Some((head, body)) => {
                    let status = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Status: "))
                        .and_then(|s| s.get(..3))
                        .and_then(|s| s.parse().ok())
                        .or(Some(200));
                    (status, body.to_string())
                }
                None => (None, text),
            }
        } else {
            (None, text)
        };
        Ran {
            status,
            code: out.status.code(),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The first line of stdout (a CLI's printed token).
    pub fn first_line(&self) -> String {
        self.stdout.lines().next().unwrap_or("").to_string()
    }
}

/// Runs a CGI request to completion with optional extra environment.
pub fn run_cgi(c: Cgi, fault: Option<Fault>) -> Ran {
    let c = fault
        .into_iter()
        .flat_map(Fault::env)
        .fold(c, |c, (k, v)| c.var(k, &v));
    let out = c.spawn().wait_with_output().expect("wait");
    Ran::from_output(&out, true)
}

/// Runs an operator command with an optional fault.
pub fn run_cli(site: &Site, bin: &str, args: &[&str], fault: Option<Fault>) -> Ran {
    let mut cmd = site.cli_command(bin, args);
    cmd.envs(fault.into_iter().flat_map(Fault::env));
    let out = cmd.output().expect("run operator command");
    Ran::from_output(&out, false)
}

/// What a scenario keeps between its steps.
#[derive(Default)]
pub struct Ctx {
    /// The site (none for the preview's first start, which makes its own tree).
    pub site: Option<Site>,
    /// A tree that is not a `Site` (the preview's first start).
    pub tree: Option<tempfile::TempDir>,
    /// A solved challenge: (id, answer).
    pub challenge: Option<(String, String)>,
    /// Tokens issued before the run.
    pub tokens: Vec<String>,
    /// Ids (messages in the spool, or tokens).
    pub ids: Vec<String>,
}

impl Ctx {
    /// The site.
    pub fn site(&self) -> &Site {
        self.site.as_ref().expect("a site")
    }

    /// The runtime root the scenario works on.
    pub fn root(&self) -> PathBuf {
        self.site
            .as_ref()
            .map(|s| s.root().to_path_buf())
            .or_else(|| self.tree.as_ref().map(|t| t.path().to_path_buf()))
            .expect("a tree")
    }
}

/// Runs the checks of one faulted run; a failed check panics again with what was
/// injected and the process's log, which the bare assertion would not show.
pub fn checked(what: &str, ran: &Ran, checks: impl FnOnce()) {
    if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(checks)) {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!("{what}: {msg}\n--- its log:\n{}", ran.stderr);
    }
}

/// One write path, runnable under a fault.
pub struct Scenario {
    /// Its name, as the figures name it.
    pub name: &'static str,
    /// A fresh site in the state the run starts from.
    pub prepare: fn() -> Ctx,
    /// The one process under the fault.
    pub act: fn(&Ctx, Option<Fault>) -> Ran,
    /// Checks the run's answer and what it stored (`fault`: what was injected, if it fired).
    pub judge: fn(&Ctx, &Ran, Option<Fault>),
    /// The next requests work and nothing accepted is missing.
    pub after: fn(&Ctx, &Ran),
}

pub const ADDR: &str = "198.51.100.120";

/// A site whose file transport cannot deliver while `var/mail-out` is a file.
fn site_with_blocked_mail() -> Site {
    let site = Site::new();
    let _ = std::fs::remove_dir(site.var("mail-out"));
    std::fs::write(site.var("mail-out"), "not a folder").expect("block mail-out");
    site
}

/// Posts a message from `addr` and returns the answer's status.
fn post_from(site: &Site, addr: &str) -> u16 {
    let (id, answer) = site.challenge(addr);
    site.contact_post(&id, &answer)
        .remote_addr(addr)
        .run()
        .status
}

/// Ids of the messages in spool folder `f`.
pub fn spooled(site: &Site, f: &str) -> Vec<String> {
    site.ls(&format!("spool/{f}"))
        .into_iter()
        .filter_map(|n| n.strip_suffix(".toml").map(str::to_string))
        .collect()
}

/// Ids of the messages the file transport wrote.
pub fn mailed(site: &Site) -> Vec<String> {
    site.ls("mail-out")
        .into_iter()
        .filter_map(|n| n.strip_suffix(".eml").map(str::to_string))
        .collect()
}

/// A site with one admin token.
fn one_admin_token() -> Ctx {
    let site = Site::new();
    let tokens = vec![site.rotate("admin")];
    Ctx {
        site: Some(site),
        tokens,
        ..Ctx::default()
    }
}

/// Two messages queued in `spool/new` (delivery blocked while they were posted), then the
/// mail folder made deliverable again and the clock moved past their backoff.
fn two_queued() -> Ctx {
    let site = site_with_blocked_mail();
    for addr in ["198.51.100.121", "198.51.100.122"] {
        assert_eq!(post_from(&site, addr), 202, "queued");
    }
    std::fs::remove_file(site.var("mail-out")).expect("unblock");
    std::fs::create_dir(site.var("mail-out")).expect("mail-out");
    site.advance_clock(86_400);
    let ids = spooled(&site, "new");
    assert_eq!(ids.len(), 2, "{ids:?}");
    Ctx {
        site: Some(site),
        ids,
        ..Ctx::default()
    }
}

/// A process ended under control: an I/O fault leaves it running to its own end (with an
/// exit code, no panic); a kill ends it by the signal only when the kill fired.
fn assert_controlled(ran: &Ran, fault: Option<Fault>, what: &str) {
    assert!(
        !ran.stderr.contains("panicked"),
        "{what}: no panic: {}",
        ran.stderr
    );
    match fault {
        Some(f) if f.kills() && f.fired(&ran.stderr) => {
            assert_eq!(ran.code, None, "{what}: killed")
        }
        _ => assert!(
            ran.code.is_some(),
            "{what}: ended by itself: {}",
            ran.stderr
        ),
    }
}

/// A CGI answer: complete (unless killed), and honest about what it did.
fn assert_cgi_controlled(ran: &Ran, fault: Option<Fault>, allowed: &[u16], what: &str) {
    assert_controlled(ran, fault, what);
    let killed = fault.is_some_and(|f| f.kills() && f.fired(&ran.stderr));
    match ran.status {
        Some(s) => assert!(
            allowed.contains(&s),
            "{what}: status {s} not one of {allowed:?}: {} / {}",
            ran.stdout,
            ran.stderr
        ),
        None => assert!(killed, "{what}: an answer with a header block"),
    }
}

/// The write paths the sweeps cover (issue 9, item 2).
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "captcha GET (rate-limit hit, challenge create, sweep step)",
            prepare: || Ctx {
                site: Some(Site::new()),
                ..Ctx::default()
            },
            act: |c, f| run_cgi(c.site().cgi("captcha", "GET").remote_addr(ADDR), f),
            judge: |c, ran, f| {
                let site = c.site();
                assert_cgi_controlled(ran, f, &[200, 500, 503], "captcha GET");
                let count = site.stored_count(ADDR, "captcha_get").unwrap_or(0);
                assert!(count <= 1, "counted at most once: {count}");
                if ran.status == Some(200) {
                    assert_eq!(count, 1, "an image was counted");
                    assert!(
                        !site.files("tmp/captcha").is_empty(),
                        "its challenge is stored"
                    );
                }
            },
            after: |c, _| {
                let site = c.site();
                let before = site.stored_count(ADDR, "captcha_get").unwrap_or(0);
                let (id, answer) = site.challenge(ADDR);
                assert_eq!(site.stored_count(ADDR, "captcha_get"), Some(before + 1));
                let post = site.contact_post(&id, &answer).remote_addr(ADDR).run();
                assert_eq!(post.status, 200, "the next post works: {}", post.text());
            },
        },
        Scenario {
            name: "contact POST (rate-limit hit, verify, spool save, delivery claim and removal)",
            prepare: || {
                let site = Site::new();
                let challenge = Some(site.challenge(ADDR));
                Ctx {
                    site: Some(site),
                    challenge,
                    ..Ctx::default()
                }
            },
            act: |c, f| {
                let (id, answer) = c.challenge.clone().expect("challenge");
                run_cgi(c.site().contact_post(&id, &answer).remote_addr(ADDR), f)
            },
            judge: |c, ran, f| {
                let site = c.site();
                assert_cgi_controlled(ran, f, &[200, 202, 500, 503], "contact POST");
                let count = site.stored_count(ADDR, "contact_post").unwrap_or(0);
                assert!(count <= 1, "counted at most once: {count}");
                let stored: std::collections::BTreeSet<String> = spooled(site, "new")
                    .into_iter()
                    .chain(spooled(site, "failed"))
                    .chain(mailed(site))
                    .collect();
                match ran.status {
                    Some(200 | 202) => {
                        assert_eq!(stored.len(), 1, "a 2xx means it is stored: {stored:?}")
                    }
                    Some(_) => assert!(
                        ran.stdout.contains("NOT received"),
                        "a refusal says NOT received: {}",
                        ran.stdout
                    ),
                    None => {}
                }
                assert!(stored.len() <= 1, "one message at most: {stored:?}");
            },
            after: |c, ran| {
                let site = c.site();
                let (id, answer) = c.challenge.clone().expect("challenge");
                let again = site.contact_post(&id, &answer).remote_addr(ADDR).run();
                if matches!(ran.status, Some(200 | 202)) {
                    assert_eq!(again.status, 403, "a used challenge never passes twice");
                }
                let next = post_from(site, "198.51.100.123");
                assert_eq!(next, 200, "the next post is delivered");
                site.advance_clock(86_400);
                let _ = site.cli("spool", &["requeue", "all"]);
                let retry = site.cli("spool", &["retry"]);
                assert!(retry.status.success(), "{retry:?}");
                assert!(spooled(site, "new").is_empty(), "everything delivered");
                let accepted = usize::from(matches!(ran.status, Some(200 | 202))) + 1;
                assert!(
                    mailed(site).len() >= accepted,
                    "every accepted message is mailed: {:?}",
                    mailed(site)
                );
            },
        },
        Scenario {
            name: "token rotate (command line)",
            prepare: one_admin_token,
            act: |c, f| run_cli(c.site(), "tokens", &["rotate", "admin"], f),
            judge: |_, ran, f| {
                assert_controlled(ran, f, "tokens rotate");
                if ran.code == Some(0) {
                    assert!(ran.first_line().starts_with("fwt_"), "{}", ran.stdout);
                } else if ran.code.is_some() {
                    assert!(!ran.stderr.trim().is_empty(), "a failure says why");
                }
            },
            after: |c, ran| {
                let site = c.site();
                assert_token(site, "admin", &c.tokens[0], true);
                if ran.code == Some(0) {
                    assert_token(site, "admin", &ran.first_line(), true);
                }
                let next = site.rotate("admin");
                assert_token(site, "admin", &next, true);
            },
        },
        Scenario {
            name: "token rotate (HTTP)",
            prepare: one_admin_token,
            act: |c, f| {
                let req = c
                    .site()
                    .cgi("tokens", "POST")
                    .query("action=rotate&profile=deploy")
                    .header("authorization", &format!("Bearer {}", c.tokens[0]));
                run_cgi(req, f)
            },
            judge: |_, ran, f| {
                assert_cgi_controlled(ran, f, &[200, 500, 503], "HTTP rotate");
                if ran.status == Some(200) {
                    assert!(ran.stdout.contains("fwt_"), "{}", ran.stdout);
                }
            },
            after: |c, ran| {
                let site = c.site();
                if ran.status == Some(200) {
                    let token = json_field(&ran.stdout, "token");
                    assert_token(site, "deploy", &token, true);
                }
                let next = site.rotate("deploy");
                assert_token(site, "deploy", &next, true);
            },
        },
        Scenario {
            name: "token revoke",
            prepare: || {
                let site = Site::new();
                let tokens = vec![site.rotate("admin"), site.rotate("admin")];
                let list = site.tokens_cli(&["list", "admin"]);
                let ids: Vec<String> = String::from_utf8_lossy(&list.stdout)
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split('\t').next().map(str::to_string))
                    .collect();
                assert_eq!(ids.len(), 2, "{ids:?}");
                Ctx {
                    site: Some(site),
                    tokens,
                    ids,
                    ..Ctx::default()
                }
            },
            act: |c, f| run_cli(c.site(), "tokens", &["revoke", "admin", &c.ids[0]], f),
            judge: |c, ran, f| {
                assert_controlled(ran, f, "tokens revoke");
                if ran.code == Some(0) {
                    assert_token(c.site(), "admin", &c.tokens[0], false);
                }
            },
            after: |c, _| {
                let site = c.site();
                assert_token(site, "admin", &c.tokens[1], true);
                let again = site.tokens_cli(&["revoke", "admin", &c.ids[0]]);
                assert!(again.status.code().is_some_and(|c| c <= 1), "{again:?}");
                assert_token(site, "admin", &c.tokens[0], false);
                assert_token(site, "admin", &c.tokens[1], true);
            },
        },
        Scenario {
            name: "spool retry (delivery claim, send, removal)",
            prepare: two_queued,
            act: |c, f| run_cli(c.site(), "spool", &["retry"], f),
            judge: |c, ran, f| {
                assert_controlled(ran, f, "spool retry");
                assert_messages_kept(c);
            },
            after: |c, _| deliver_all(c),
        },
        Scenario {
            name: "spool requeue all",
            prepare: || {
                let c = two_queued();
                for id in &c.ids {
                    let site = c.site();
                    std::fs::rename(
                        site.var(&format!("spool/new/{id}.toml")),
                        site.var(&format!("spool/failed/{id}.toml")),
                    )
                    .expect("park");
                }
                c
            },
            act: |c, f| run_cli(c.site(), "spool", &["requeue", "all"], f),
            judge: |c, ran, f| {
                assert_controlled(ran, f, "spool requeue");
                assert_messages_kept(c);
            },
            after: |c, _| deliver_all(c),
        },
        Scenario {
            name: "sweep (expired challenges and windows, orphan locks, old temp files)",
            prepare: || {
                let site = Site::new();
                for addr in ["198.51.100.124", "198.51.100.125"] {
                    site.challenge(addr);
                }
                let old = site.var("tmp/captcha/.tmp-left-by-a-crash");
                std::fs::write(&old, "half").expect("temp");
                age(&old);
                site.advance_clock(2 * 86_400);
                Ctx {
                    site: Some(site),
                    ..Ctx::default()
                }
            },
            act: |c, f| run_cli(c.site(), "tokens", &["sweep"], f),
            judge: |_, ran, f| assert_controlled(ran, f, "tokens sweep"),
            after: |c, _| {
                let site = c.site();
                let out = site.tokens_cli(&["sweep"]);
                assert!(out.status.success(), "{out:?}");
                let left: Vec<String> = site
                    .tree()
                    .into_iter()
                    .filter(|p| {
                        p.starts_with("tmp/captcha/")
                            || p.starts_with("tmp/ratelimit/")
                            || p.contains("/captcha_")
                            || p.contains("/ratelimit_")
                    })
                    .collect();
                assert!(left.is_empty(), "the sweep finished the job: {left:?}");
            },
        },
        Scenario {
            name: "setup (the preview's first start)",
            prepare: || {
                let tree = tempfile::tempdir().expect("tempdir");
                std::fs::create_dir_all(tree.path().join("deploy/site")).expect("site");
                std::fs::write(tree.path().join("deploy/site/index.html"), "<p>hi</p>")
                    .expect("index");
                Ctx {
                    tree: Some(tree),
                    ..Ctx::default()
                }
            },
            act: |c, f| run_preview(c.tree.as_ref().expect("tree").path(), f),
            judge: |c, ran, f| {
                assert_controlled(ran, f, "preview first start");
                let served = ran.stdout.contains("formwarden preview: http://");
                if !served && ran.code.is_some() {
                    assert!(
                        ran.stderr.contains("formwarden preview:"),
                        "a failed start says why: {}",
                        ran.stderr
                    );
                }
                assert_config_whole(c.tree.as_ref().expect("tree").path());
            },
            after: |c, _| {
                let root = c.tree.as_ref().expect("tree").path();
                let again = run_preview(root, None);
                assert!(
                    again.stdout.contains("formwarden preview: http://"),
                    "the next start serves: {again:?}"
                );
                assert_config_whole(root);
                assert!(root.join("var/config/config.toml").exists());
            },
        },
    ]
}

/// Sets a file's modification time two hours back (older than the sweep's temp limit).
pub fn age(path: &Path) {
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open to age");
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(7200))
        .expect("age");
}

fn assert_token(site: &Site, profile: &str, token: &str, valid: bool) {
    let out = site.tokens_cli(&["verify", profile, token]);
    assert_eq!(
        out.status.code(),
        Some(if valid { 0 } else { 1 }),
        "{profile} token {token} valid={valid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Each queued message is in the spool (new/ or failed/) or was mailed: none is lost.
fn assert_messages_kept(c: &Ctx) {
    let site = c.site();
    for id in &c.ids {
        let somewhere = spooled(site, "new").contains(id)
            || spooled(site, "failed").contains(id)
            || mailed(site).contains(id);
        assert!(somewhere, "message {id} is kept: {:?}", site.tree());
    }
}

/// Requeue and retry deliver every message exactly once as a file.
fn deliver_all(c: &Ctx) {
    let site = c.site();
    site.advance_clock(86_400);
    let requeue = site.cli("spool", &["requeue", "all"]);
    assert!(requeue.status.code().is_some(), "{requeue:?}");
    let retry = site.cli("spool", &["retry"]);
    assert!(retry.status.success(), "{retry:?}");
    let mut mailed = mailed(site);
    mailed.sort();
    let mut ids = c.ids.clone();
    ids.sort();
    assert_eq!(mailed, ids, "each message delivered once");
    assert!(spooled(site, "new").is_empty() && spooled(site, "failed").is_empty());
}

/// The config the first start wrote, if any, is whole: it parses and has its salt.
fn assert_config_whole(root: &Path) {
    let path = root.join("var/config/config.toml");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let t: toml::Table = toml::from_str(&text).expect("a whole config");
        let salt = t["ip_salt"].as_str().unwrap_or("");
        assert_eq!(salt.len(), 64, "a whole salt: {text}");
    }
}

/// Starts the preview on a free port over `root`; returns once it serves (then stops it)
/// or once it ends by itself.
pub fn run_preview(root: &Path, fault: Option<Fault>) -> Ran {
    let mut cmd = Command::new(exe("preview"));
    cmd.args(["--port", "0", "--root"])
        .arg(root)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.envs(fault.into_iter().flat_map(Fault::env));
    let mut child = cmd.spawn().expect("start preview");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(|l| l.ok())
        {
            seen.push_str(&line);
            seen.push('\n');
            if line.starts_with("formwarden preview: http://") {
                let _ = tx.send(seen.clone());
            }
        }
        let _ = tx.send(seen);
    });
    // A hang guard only: a start takes milliseconds.
    let seen = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
    let served = seen.contains("formwarden preview: http://");
    if served {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("wait preview");
    let mut ran = Ran::from_output(&out, false);
    ran.stdout = seen;
    if served {
        // Stopped by us, not by a fault.
        ran.code = Some(0);
    }
    ran
}

/// Checks every file under `var/` of `root`: state and spool files parse, delivered mail
/// is whole. Returns the temp files found (a kill may leave some; an I/O error must not).
pub fn validate_tree(root: &Path) -> Vec<PathBuf> {
    let mut temps = Vec::new();
    for path in walk(&root.join("var")) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(".tmp-") {
            temps.push(path);
            continue;
        }
        let bytes = std::fs::read(&path).expect("readable");
        if name.ends_with(".toml") {
            let text = std::str::from_utf8(&bytes).unwrap_or_else(|_| {
                panic!("{}: torn (not UTF-8)", path.display());
            });
            if let Err(e) = toml::from_str::<toml::Table>(text) {
                panic!("{}: torn or corrupt: {e}\n{text}", path.display());
            }
        } else if name.ends_with(".eml") {
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                text.contains("\r\n\r\n") && text.contains("Line two"),
                "{}: a whole message: {text}",
                path.display()
            );
        }
    }
    temps
}
