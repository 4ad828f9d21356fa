//! Issue 12, items 7 and 8: deploy/ftp/deploy.sh against a real FTP server (vsftpd with
//! explicit TLS and a test certificate) on loopback, the deployed tree then served by a
//! real Apache set up as a stock shared host, whose CGI processes run as `nobody` while the
//! files belong to the uploading account. The steps are those of docs/INSTALL.md: the
//! release archive as shipped (static, no test hooks), the example config with the salt,
//! the mail settings and the first-token hash, the first admin token, the self-check URL
//! and a test message.
//!
//! The shipped executables have no test hook for CAPTCHA answers, so these tests find the
//! answer the way only the site owner could: from the challenge's salted hash in
//! `var/tmp/captcha/`, with the salt from their own config and `captcha_length = 4`.

use crate::util::ftp::{AccountDir, Ftp, FtpSetup, PASSWORD};
use crate::util::http::Client;
use crate::util::net::free_port;
use crate::util::servers::{Apache, Server};
use crate::util::smtp::Smtp;
use crate::util::{SALT, good_form, json_field, procs, release, wait_for, wait_until};
use sha2::{Digest, Sha256};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The one-time secret whose hash goes into the config for the first admin token.
const BOOTSTRAP_SECRET: &str = "first-admin-secret-for-the-ftp-test-0123456789";
/// What an update replaces, as the tests check it: the executables, the script, a command.
const UPDATED: [&str; 5] = [
    "public_html/cgi-bin/captcha.cgi",
    "public_html/cgi-bin/contact.cgi",
    "public_html/cgi-bin/tokens.cgi",
    "public_html/contact.js",
    "bin/spool",
];
/// The executables of a release, as deployed.
const LIVE_EXECUTABLES: [&str; 3] = [
    "public_html/cgi-bin/captcha.cgi",
    "public_html/cgi-bin/contact.cgi",
    "public_html/cgi-bin/tokens.cgi",
];

use formwarden::random::hex;

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Asserts that each of `rels` is live as release `want` ("A" or "B").
fn assert_release(live: &Path, a: &Path, b: &Path, rels: &[&str], want: &str, when: &str) {
    for rel in rels {
        assert_eq!(which(live, a, b, rel), want, "{rel} {when}");
    }
}

/// Messages waiting in `var/spool/new/` (temp files aside).
fn spooled(root: &Path) -> usize {
    std::fs::read_dir(root.join("var/spool/new"))
        .expect("spool")
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count()
}

/// Release copies kept in `formwarden-releases/`.
fn release_copies(root: &Path) -> usize {
    std::fs::read_dir(root.join("formwarden-releases"))
        .expect("releases")
        .flatten()
        .filter(|e| e.path().is_dir())
        .count()
}

/// Replaces `from` in `text`, and fails loudly when the example config no longer has it.
fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the example config has no `{from}`");
    text.replacen(from, to, 1)
}

/// The operator's config, made from the archive's example as docs/INSTALL.md says: the
/// salt, SMTP on `smtp_port`, the first-token hash (and 4-character images, see the top).
/// Written into `dir`.
fn operator_config(top: &Path, smtp_port: u16, dir: &Path) -> PathBuf {
    let example = std::fs::read_to_string(top.join("var/config/config.example.toml"))
        .expect("read the example config");
    let mut c = edit(
        &example,
        "ip_salt = \"CHANGE-ME-to-32-or-more-random-characters\"",
        &format!("ip_salt = \"{SALT}\""),
    );
    c = edit(&c, "captcha_length = 5 ", "captcha_length = 4 ");
    // The test posts the moment it has the image, as no person could.
    c = edit(&c, "min_fill_seconds = 3 ", "min_fill_seconds = 0 ");
    c = edit(&c, "transport = \"sendmail\"", "transport = \"smtp\"");
    c = edit(
        &c,
        "# bootstrap_sha256 = \"…\"",
        &format!(
            "bootstrap_sha256 = \"{}\"",
            sha256_hex(BOOTSTRAP_SECRET.as_bytes())
        ),
    );
    c.push_str(&format!(
        "\n[mail.smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\nsecurity = \"plain\"\ntimeout_seconds = 5\n"
    ));
    let path = dir.join("config.toml");
    std::fs::write(&path, c).expect("write the operator's config");
    path
}

/// Runs deploy/ftp/deploy.sh with the password in `LFTP_PASSWORD` and the test
/// certificate trusted.
fn deploy_cmd(ftp: &Ftp, args: &[&str]) -> Command {
    script_cmd(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/ftp/deploy.sh"),
        ftp,
        args,
    )
}

/// Runs the `deploy.sh` shipped in an unpacked archive, from inside that folder.
fn shipped_deploy(top: &Path, ftp: &Ftp, args: &[&str]) -> Output {
    script_cmd(Path::new("./deploy.sh"), ftp, args)
        .current_dir(top)
        .output()
        .expect("run ./deploy.sh")
}

fn script_cmd(script: &Path, ftp: &Ftp, args: &[&str]) -> Command {
    let home = tempfile::tempdir().expect("home").keep();
    let mut cmd = Command::new("bash");
    cmd.arg(script)
        .arg("--ca-file")
        .arg(ftp.cert())
        .args(args)
        .env("LFTP_PASSWORD", PASSWORD)
        // lftp keeps a history under $HOME; not in the tester's own.
        .env("HOME", home);
    cmd
}

fn deploy(ftp: &Ftp, args: &[&str]) -> Output {
    deploy_cmd(ftp, args).output().expect("run deploy.sh")
}

fn assert_ok(out: &Output, ftp: &Ftp) {
    assert!(
        out.status.success(),
        "deploy.sh failed:\n{}{}\n--- server log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        ftp.log()
    );
}

/// The challenge id from the browser's cookie, and its answer found from the salted hash.
fn solve(root: &Path, browser: &Client) -> String {
    let id = browser.cookie("fw_captcha").expect("the challenge cookie");
    let path = formwarden::shard::path(&root.join("var/tmp/captcha"), id, ".toml");
    let stored: toml::Table = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .parse()
        .expect("a challenge file");
    let want = stored["answer_hash"].as_str().expect("answer_hash");
    let alphabet = formwarden::captcha::ALPHABET;
    let mut answer = [0u8; 4];
    for n in 0..alphabet.len().pow(4) {
        let mut k = n;
        for a in answer.iter_mut() {
            *a = alphabet[k % alphabet.len()];
            k /= alphabet.len();
        }
        let guess = String::from_utf8_lossy(&answer);
        if formwarden::captcha::answer_hash(SALT, id, &guess) == want {
            return String::from_utf8_lossy(&answer).into_owned();
        }
    }
    panic!("no 4-character answer matches challenge {id}: {stored:?}");
}

/// A visitor's path through the deployed site: the static page, the image, the POST.
/// Returns the POST's status.
fn send_message(server: &Server, root: &Path, subject: &str) -> u16 {
    let mut browser = server.client();
    let page = browser.get("/");
    assert_eq!(page.status, 200, "{}\n{}", page.describe(), server.log());
    assert!(
        page.text().contains("/cgi-bin/contact.cgi"),
        "the example page posts to the deployed name"
    );
    let image = browser.get("/cgi-bin/captcha.cgi");
    assert_eq!(image.status, 200, "{}\n{}", image.describe(), server.log());
    assert!(image.body.starts_with(b"\x89PNG"), "an image");
    let answer = solve(root, &browser);
    let mut form = good_form(&answer);
    form.retain(|(k, _)| *k != "subject");
    form.push(("subject", subject.to_string()));
    let sent = browser.post_form("/cgi-bin/contact.cgi", &form);
    assert!(
        sent.status == 200 || sent.status == 202,
        "{}\n{}",
        sent.describe(),
        server.log()
    );
    sent.status
}

/// The first admin token, issued over HTTP with the bootstrap secret (INSTALL.md step 5).
fn first_admin_token(server: &Server) -> String {
    let auth = format!("Bearer {BOOTSTRAP_SECRET}");
    let r = server.client().send(
        "POST",
        "/cgi-bin/tokens.cgi?action=rotate&profile=admin",
        &[("Authorization", &auth), ("Accept", "application/json")],
        b"",
    );
    assert_eq!(r.status, 200, "{}\n{}", r.describe(), server.log());
    let token = json_field(&r.text(), "token");
    assert!(
        token.starts_with("fwt_"),
        "a token in the answer: {}",
        r.text()
    );
    token
}

/// Waits up to 20 s for `n` messages at the SMTP server.
fn wait_for_mail(smtp: &Smtp, n: usize) -> Vec<String> {
    wait_until(Duration::from_secs(20), || smtp.messages().len() >= n);
    smtp.messages()
}

/// Every file under `dir` with its bytes (for "left exactly as it was").
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("list").flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).expect("stat");
            if meta.is_dir() {
                stack.push(p.clone());
                out.push((p, Vec::new(), meta.mode()));
            } else {
                let bytes = std::fs::read(&p).expect("read");
                out.push((p, bytes, meta.mode()));
            }
        }
    }
    out.sort();
    out
}

/// A second release made from the first, told apart by its bytes: a marker appended to
/// every executable (an ELF file runs unchanged with data after its end) and to contact.js.
fn release_b(a_top: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let top = dir.join("formwarden-0.1.1-x86_64-linux-musl");
    let st = Command::new("cp")
        .arg("-a")
        .arg(a_top)
        .arg(&top)
        .status()
        .expect("cp");
    assert!(st.success());
    for f in LIVE_EXECUTABLES
        .iter()
        .chain(&["bin/spool", "bin/tokens", "public_html/contact.js"])
    {
        let mut bytes = std::fs::read(top.join(f)).expect("read");
        bytes.extend_from_slice(b"\n// formwarden test release B\n");
        std::fs::write(top.join(f), bytes).expect("write");
    }
    let archive = dir.join("formwarden-0.1.1-x86_64-linux-musl.tar.gz");
    let st = Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(dir)
        .arg("formwarden-0.1.1-x86_64-linux-musl")
        .status()
        .expect("tar");
    assert!(st.success());
    let sum = Command::new("sha256sum")
        .arg(archive.file_name().expect("name"))
        .current_dir(dir)
        .output()
        .expect("sha256sum");
    std::fs::write(format!("{}.sha256", archive.display()), sum.stdout).expect("write sha256");
    (archive, top)
}

/// Which release a live file is: "A", "B", or a panic when it is neither (torn).
fn which(live: &Path, a: &Path, b: &Path, rel: &str) -> &'static str {
    let bytes = std::fs::read(live.join(rel)).unwrap_or_else(|e| panic!("read live {rel}: {e}"));
    if bytes == std::fs::read(a.join(rel)).expect("read A") {
        "A"
    } else if bytes == std::fs::read(b.join(rel)).expect("read B") {
        "B"
    } else {
        panic!("live {rel} is neither release A nor release B: a torn upload")
    }
}

/// Waits until no CGI process of `server` runs any more (one may go on after its answer,
/// sweeping or sending), so that var/ holds still.
fn wait_cgi_idle(server: &Server) {
    let idle = wait_until(Duration::from_secs(30), || {
        !server
            .pids()
            .into_iter()
            .any(|pid| procs::comm(pid).is_some_and(|c| c.ends_with(".cgi")))
    });
    assert!(idle, "CGI processes still running");
}

fn assert_answers(server: &Server) {
    let mut c = server.client();
    let img = c.get("/cgi-bin/captcha.cgi");
    assert_eq!(img.status, 200, "{}\n{}", img.describe(), server.log());
    assert!(img.body.starts_with(b"\x89PNG"));
    let form = c.get("/cgi-bin/contact.cgi");
    assert_eq!(form.status, 200, "{}\n{}", form.describe(), server.log());
}

// ---------------------------------------------------------------------------------------

/// docs/INSTALL.md end to end: a fresh FTPS deploy of the shipped archive, Apache as a
/// shared host running the CGI programs as another account than the uploader, the first
/// admin token, the self-check URL, and a test message that reaches the SMTP server.
#[test]
fn a_fresh_ftps_deploy_serves_the_whole_form_with_cgi_as_another_account() {
    let tmp = tempfile::tempdir().expect("tmp");
    let a_top = release::unpack(release::archive(), tmp.path());
    let smtp_port = free_port();
    let smtp = Smtp::start(tmp.path(), smtp_port, &[]);
    let home = AccountDir::new();
    let ftp = Ftp::start(
        &home,
        FtpSetup {
            tls: true,
            max_rate: 0,
        },
    );
    // INSTALL.md steps 1 to 3: unpack, make the config inside the unpacked folder, run
    // its deploy.sh.
    let config = operator_config(&a_top, smtp_port, &a_top.join("var/config"));
    let started = Instant::now();
    let out = shipped_deploy(&a_top, &ftp, &["--var-mode", "shared", ".", &ftp.url()]);
    assert_ok(&out, &ftp);
    eprintln!("full FTPS deploy: {:?}", started.elapsed());
    let root = home.path();
    // Everything came over TLS: the server forces it, and the log shows the upgrade.
    assert!(ftp.log().contains("AUTH TLS"), "the login used TLS");
    // The uploader owns the files; the web server's CGI processes are someone else.
    let uploader = std::fs::metadata(root.join("public_html/cgi-bin/contact.cgi"))
        .expect("contact.cgi")
        .uid();
    for rel in LIVE_EXECUTABLES {
        let meta = std::fs::metadata(root.join(rel)).expect(rel);
        assert_eq!(meta.mode() & 0o777, 0o755, "{rel} mode");
        assert_eq!(
            std::fs::read(root.join(rel)).expect("read"),
            std::fs::read(a_top.join(rel)).expect("read"),
            "{rel} arrived byte for byte (binary mode)"
        );
    }
    assert_eq!(
        std::fs::read(root.join("var/config/config.toml")).expect("config"),
        std::fs::read(&config).expect("config"),
    );

    let server = Apache::start_deployed(root, "public_html");
    // Step 4: the self-check, opened by the bootstrap secret while no admin token exists.
    let before = server.client().send(
        "GET",
        "/cgi-bin/tokens.cgi?action=check",
        &[
            ("Authorization", &format!("Bearer {BOOTSTRAP_SECRET}")),
            ("Accept", "application/json"),
        ],
        b"",
    );
    assert_eq!(before.status, 200, "{}\n{}", before.text(), server.log());
    // Step 5: the first admin token; then the report needs it.
    let admin = first_admin_token(&server);
    let auth = format!("Bearer {admin}");
    let check = server.client().send(
        "GET",
        "/cgi-bin/tokens.cgi?action=check",
        &[("Authorization", &auth), ("Accept", "application/json")],
        b"",
    );
    assert_eq!(
        check.status,
        200,
        "the self-check passes: {}\n{}",
        check.text(),
        server.log()
    );
    // The secret opened the first token only.
    let again = server.client().send(
        "POST",
        "/cgi-bin/tokens.cgi?action=rotate&profile=admin",
        &[("Authorization", &format!("Bearer {BOOTSTRAP_SECRET}"))],
        b"",
    );
    assert_eq!(again.status, 401, "{}", again.describe());

    send_message(&server, root, "Test message after the FTP install");
    let mail = wait_for_mail(&smtp, 1);
    assert_eq!(mail.len(), 1, "one message at the SMTP server");
    assert!(mail[0].contains("Test message after the FTP install"));
    assert!(mail[0].contains("MIME-Version: 1.0"));

    // The state the CGI programs wrote belongs to the web server's account, not to the
    // uploader: the deploy's folder modes are what made that possible.
    let tokens = std::fs::read_dir(root.join("var/state/tokens"))
        .expect("token lists")
        .flatten()
        .next()
        .expect("the admin token list");
    let writer = tokens.metadata().expect("stat").uid();
    assert_ne!(
        writer, uploader,
        "CGI ran as another account than the uploader"
    );
}

/// An update keeps the spooled message, the token lists and the config byte for byte,
/// replaces the release, keeps the operator's own page, and --rollback puts the previous
/// release back (twice: forward again). --dry-run changes nothing.
#[test]
fn an_update_keeps_state_and_config_and_rollback_switches_releases() {
    let tmp = tempfile::tempdir().expect("tmp");
    let a_top = release::unpack(release::archive(), tmp.path());
    let (b_archive, b_top) = release_b(&a_top, tmp.path());
    let home = AccountDir::new();
    let ftp = Ftp::start(
        &home,
        FtpSetup {
            tls: true,
            max_rate: 0,
        },
    );
    let root = home.path();
    // Nothing listens on this port: the message stays in the spool.
    // Nothing listens on this port, and no request tries again after its answer: the
    // message stays in the spool, and var/ stays still between the requests.
    let config = operator_config(&a_top, free_port(), tmp.path());
    let text = std::fs::read_to_string(&config).expect("read");
    std::fs::write(
        &config,
        edit(
            &text,
            "retry_after_answer = true",
            "retry_after_answer = false",
        ),
    )
    .expect("write");
    let url = ftp.url();
    let cfg = config.to_str().expect("utf-8");
    let a_archive = release::archive().to_str().expect("utf-8");
    assert_ok(
        &deploy(
            &ftp,
            &["--var-mode", "shared", "--config", cfg, a_archive, &url],
        ),
        &ftp,
    );
    let server = Apache::start_deployed(root, "public_html");
    first_admin_token(&server);
    assert_eq!(
        send_message(&server, root, "Kept across the update"),
        202,
        "SMTP down: received and spooled"
    );
    wait_cgi_idle(&server);
    // The operator's own front page.
    std::fs::write(root.join("public_html/index.html"), "<p>my own page</p>").expect("write");

    let state_before = snapshot(&root.join("var"));
    assert_eq!(spooled(root), 1, "one message waits in the spool");

    let b = b_archive.to_str().expect("utf-8");
    let whole_before = snapshot(root);
    let dry = deploy(&ftp, &["--dry-run", "--var-mode", "shared", b, &url]);
    assert_ok(&dry, &ftp);
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains("install public_html/cgi-bin/contact.cgi")
    );
    assert_eq!(snapshot(root), whole_before, "--dry-run changed nothing");

    // Update with a different config at hand: the one on the server stays.
    let other = tmp.path().join("other.toml");
    std::fs::write(&other, "ip_salt = \"x\"\n").expect("write");
    let out = deploy(
        &ftp,
        &[
            "--var-mode",
            "shared",
            "--config",
            other.to_str().expect("utf-8"),
            b,
            &url,
        ],
    );
    assert_ok(&out, &ftp);
    assert!(String::from_utf8_lossy(&out.stderr).contains("leaving it as it is"));
    assert_eq!(snapshot(&root.join("var")), state_before, "var/ untouched");
    assert_eq!(
        std::fs::read_to_string(root.join("public_html/index.html")).expect("read"),
        "<p>my own page</p>",
        "the operator's page stays"
    );
    let live = root.to_path_buf();
    assert_release(&live, &a_top, &b_top, &UPDATED, "B", "after the update");
    assert_answers(&server);

    let back = deploy(&ftp, &["--rollback", "--var-mode", "shared", &url]);
    assert_ok(&back, &ftp);
    assert_release(&live, &a_top, &b_top, &UPDATED, "A", "after --rollback");
    assert_answers(&server);
    let forward = deploy(&ftp, &["--rollback", "--var-mode", "shared", &url]);
    assert_ok(&forward, &ftp);
    assert_release(
        &live,
        &a_top,
        &b_top,
        &LIVE_EXECUTABLES,
        "B",
        "after a second --rollback",
    );
    // The message is still there, and still one.
    assert_eq!(spooled(root), 1);
    // Two release copies are kept: the live one and the one before.
    assert_eq!(release_copies(root), 2);
}

/// Tells whether a deploy reached a phase, from what the account folder holds.
type Phase<'a> = dyn Fn(&Path) -> bool + 'a;

/// A deploy killed while it copies the release, and again while it installs the
/// executables: every live file is wholly the old or the new release, the site answers
/// and takes messages throughout, and running the deploy again completes it.
#[test]
fn a_deploy_cut_off_half_way_leaves_a_working_site_and_can_be_run_again() {
    let tmp = tempfile::tempdir().expect("tmp");
    let a_top = release::unpack(release::archive(), tmp.path());
    let (b_archive, b_top) = release_b(&a_top, tmp.path());
    let home = AccountDir::new();
    let root = home.path().to_path_buf();
    let fast = Ftp::start(
        &home,
        FtpSetup {
            tls: true,
            max_rate: 0,
        },
    );
    // The same account over a slow line (2 MB/s), so the kills land mid-transfer.
    let slow = Ftp::start(
        &home,
        FtpSetup {
            tls: true,
            max_rate: 2_000_000,
        },
    );
    let smtp_port = free_port();
    let smtp = Smtp::start(tmp.path(), smtp_port, &[]);
    let config = operator_config(&a_top, smtp_port, tmp.path());
    let a_archive = release::archive().to_str().expect("utf-8");
    let b = b_archive.to_str().expect("utf-8");
    assert_ok(
        &deploy(
            &fast,
            &[
                "--var-mode",
                "shared",
                "--config",
                config.to_str().expect("utf-8"),
                a_archive,
                &fast.url(),
            ],
        ),
        &fast,
    );
    let server = Apache::start_deployed(&root, "public_html");
    let current =
        || std::fs::read_to_string(root.join("formwarden-releases/CURRENT")).expect("CURRENT");
    let first = current();

    // Kill 1: while the copy for --rollback is uploading; kill 2: while contact.cgi's
    // temporary file is uploading, after captcha.cgi was renamed into place.
    let copying = |root: &Path| {
        std::fs::read_dir(root.join("formwarden-releases"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| first.trim() != e.file_name().to_string_lossy())
            .any(|e| {
                std::fs::metadata(e.path().join("public_html/cgi-bin/captcha.cgi"))
                    .is_ok_and(|m| m.len() > 0)
            })
    };
    let installing = |root: &Path| {
        std::fs::metadata(root.join("public_html/cgi-bin/fw-upload-contactcgi.tmp"))
            .is_ok_and(|m| m.len() > 0)
    };
    let conditions: [(&str, &Phase<'_>); 2] = [("copying", &copying), ("installing", &installing)];
    for (n, (phase, ready)) in conditions.iter().enumerate() {
        let mut child = deploy_cmd(&slow, &["--var-mode", "shared", b, &slow.url()])
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start deploy.sh");
        // True once the phase is seen, false when deploy.sh ended before it.
        let seen = wait_for(Duration::from_secs(120), || {
            if ready(&root) {
                return Some(true);
            }
            child.try_wait().expect("wait").map(|_| false)
        });
        assert_ne!(
            seen,
            Some(false),
            "deploy.sh ended before the {phase} phase was seen"
        );
        assert_eq!(seen, Some(true), "the {phase} phase never came");
        assert!(
            procs::kill_hard(-(child.id() as i32)),
            "kill deploy.sh's process group"
        );
        child.wait().expect("reap deploy.sh");
        assert_eq!(current(), first, "the cut-off deploy did not record itself");
        let mut seen = Vec::new();
        for rel in LIVE_EXECUTABLES.iter().chain(&["public_html/contact.js"]) {
            seen.push((rel, which(&root, &a_top, &b_top, rel)));
        }
        if *phase == "installing" {
            assert_eq!(
                which(&root, &a_top, &b_top, "public_html/cgi-bin/captcha.cgi"),
                "B"
            );
            assert_eq!(
                which(&root, &a_top, &b_top, "public_html/cgi-bin/contact.cgi"),
                "A"
            );
        } else {
            assert!(seen.iter().all(|(_, r)| *r == "A"), "{seen:?}");
        }
        send_message(&server, &root, &format!("During cut-off deploy {n}"));
    }
    assert_eq!(wait_for_mail(&smtp, 2).len(), 2, "both messages went out");

    // Run again, to the end.
    assert_ok(
        &deploy(&fast, &["--var-mode", "shared", b, &fast.url()]),
        &fast,
    );
    assert_ne!(current(), first);
    assert_release(
        &root,
        &a_top,
        &b_top,
        &UPDATED[..4],
        "B",
        "after the completed deploy",
    );
    send_message(&server, &root, "After the completed deploy");
    assert_eq!(wait_for_mail(&smtp, 3).len(), 3);
    // The half-uploaded copies were removed; the live release and the one before stay.
    assert_eq!(release_copies(&root), 2);
}

/// Without TLS on the server the deploy refuses before anything is uploaded, and says how
/// to go on; with --insecure-plain-ftp it deploys, here into an account with no folder
/// outside the web root, where var/ and the release copies are never served.
#[test]
fn plain_ftp_is_refused_without_the_flag_and_var_in_the_web_root_stays_hidden() {
    let tmp = tempfile::tempdir().expect("tmp");
    let a_top = release::unpack(release::archive(), tmp.path());
    let home = AccountDir::new();
    let ftp = Ftp::start(
        &home,
        FtpSetup {
            tls: false,
            max_rate: 0,
        },
    );
    let archive = release::archive().to_str().expect("utf-8");
    let url = ftp.url();
    let refused = deploy(&ftp, &["--var-mode", "shared", archive, &url]);
    assert_eq!(refused.status.code(), Some(1));
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("does not offer TLS") && why.contains("--insecure-plain-ftp"),
        "{why}"
    );
    assert_eq!(
        std::fs::read_dir(home.path()).expect("list").count(),
        0,
        "nothing was uploaded"
    );

    let config = operator_config(&a_top, free_port(), tmp.path());
    let out = deploy(
        &ftp,
        &[
            "--insecure-plain-ftp",
            "--web-root",
            ".",
            "--var-mode",
            "shared",
            "--config",
            config.to_str().expect("utf-8"),
            archive,
            &url,
        ],
    );
    assert_ok(&out, &ftp);
    assert!(String::from_utf8_lossy(&out.stderr).contains("plain FTP"));
    let server = Apache::start_deployed(home.path(), ".");
    assert_answers(&server);
    // The operator's command-line programs land in the web root too: they must not be
    // downloadable (nor the release copies, nor anything of var/).
    for hidden in [
        "/var/config/config.toml",
        "/var/config/config.example.toml",
        "/formwarden-releases/CURRENT",
        "/bin/spool",
        "/bin/tokens",
    ] {
        let r = server.client().get(hidden);
        assert_eq!(r.status, 403, "{hidden}: {}", r.describe());
    }
}
