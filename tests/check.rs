//! Issue 12, item 2: the self-check. Every executable answers `--check` with one line per
//! check in plain words, exit 0 when all pass and 1 otherwise; the same report is reachable
//! over HTTP with the admin token only (401 and nothing revealed without it).

use crate::util::*;
use std::process::Command;

fn check(site: &Site, bin: &str) -> (i32, String) {
    let out = Command::new(exe(bin))
        .arg("--check")
        .env_clear()
        .env("FORMWARDEN_ROOT", site.root())
        .output()
        .expect("run --check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn line<'a>(report: &'a str, name: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no {name} line in:\n{report}"))
}

#[test]
fn every_executable_checks_a_good_installation() {
    let site = Site::new();
    for bin in ["captcha", "contact", "tokens", "spool"] {
        let (code, report) = check(&site, bin);
        assert_eq!(code, 0, "{bin}:\n{report}");
        for name in [
            "root",
            "config",
            "folders",
            "locking",
            "filesystem",
            "randomness",
            "clock",
            "mail",
            "store",
            "protection",
            "ownership",
            "messages",
        ] {
            assert!(line(&report, name).starts_with("ok"), "{bin}:\n{report}");
        }
    }
}

#[test]
fn each_problem_is_named_with_what_to_do() {
    let site = Site::new();
    let config = site.var("config/config.toml");
    let good = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        good.replace("[mail]", "captcha_max_gett = 3\n[mail]"),
    )
    .expect("w");
    let (code, report) = check(&site, "captcha");
    assert_eq!(code, 1, "{report}");
    assert!(line(&report, "config").starts_with("FAIL"), "{report}");
    assert!(
        line(&report, "config").contains("captcha_max_gett"),
        "{report}"
    );
    std::fs::write(&config, &good).expect("w");

    // A file where a folder belongs.
    let spool = site.var("spool/failed");
    std::fs::remove_dir_all(&spool).expect("rm");
    std::fs::write(&spool, b"x").expect("file");
    let (code, report) = check(&site, "contact");
    assert_eq!(code, 1);
    assert!(
        line(&report, "folders").contains("spool/failed"),
        "{report}"
    );
    std::fs::remove_file(&spool).expect("rm");

    // A sendmail that is not there.
    let sendmail = good.replace(
        "transport = \"file\"",
        "transport = \"sendmail\"\n[mail.sendmail]\ncommand = \"/nonexistent/sendmail\"\n[mail.x]",
    );
    let sendmail = sendmail.replace("[mail.x]\n[mail.file]", "[mail.file]");
    std::fs::write(&config, &sendmail).expect("w");
    let (code, report) = check(&site, "tokens");
    assert_eq!(code, 1, "{report}");
    assert!(
        line(&report, "mail").contains("/nonexistent/sendmail"),
        "{report}"
    );
    std::fs::write(&config, &good).expect("w");

    // var/ inside a web root (the root holds the site's index.html) needs its guard.
    std::fs::write(site.root().join("index.html"), "<p>site</p>").expect("w");
    let (code, report) = check(&site, "captcha");
    assert_eq!(code, 1);
    assert!(
        line(&report, "protection").contains("var.htaccess"),
        "{report}"
    );
    let guard = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/apache/var.htaccess");
    std::fs::copy(guard, site.var(".htaccess")).expect("guard");
    let (code, report) = check(&site, "captcha");
    assert_eq!(code, 0, "{report}");
    assert!(
        site.files("lock").iter().all(|f| !f.contains("check")),
        "probe removed"
    );
}

#[test]
fn a_missing_runtime_tree_fails_without_creating_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("nothing-here");
    let out = Command::new(exe("captcha"))
        .arg("--check")
        .env_clear()
        .env("FORMWARDEN_ROOT", &root)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("does not exist"));
    assert!(!root.exists(), "the check created nothing");
}

#[test]
fn the_report_over_http_needs_the_admin_token() {
    let site = Site::new();
    let admin = site.rotate("admin");
    let deploy = site.rotate("deploy");
    let ask = |bearer: Option<&str>| {
        let mut c = site
            .cgi("tokens", "GET")
            .query("action=check")
            .header("accept", "application/json");
        if let Some(b) = bearer {
            c = c.header("authorization", &format!("Bearer {b}"));
        }
        c.run()
    };
    for bearer in [None, Some(deploy.as_str()), Some("fwt_not-a-token")] {
        let a = ask(bearer);
        assert_eq!(a.status, 401, "{}", a.text());
        assert!(
            !a.text().contains("config"),
            "reveals nothing: {}",
            a.text()
        );
        assert!(!a.text().contains(&site.root().display().to_string()));
    }
    let a = ask(Some(&admin));
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(a.text().contains("\"name\":\"locking\""), "{}", a.text());
    assert!(a.text().contains("\"ok\":true"), "{}", a.text());
    let html = site
        .cgi("tokens", "GET")
        .query("action=check")
        .header("authorization", &format!("Bearer {admin}"))
        .run();
    assert_eq!(html.status, 200);
    assert!(html.text().contains("<table>"), "{}", html.text());
}

/// Before the first admin token exists, the bootstrap secret opens the report too: an
/// FTP-only operator whose first-token request fails (say var/ is not writable for the
/// web server's account) can see why. Once an admin token exists, the secret opens nothing.
#[test]
fn the_bootstrap_secret_opens_the_report_until_the_first_admin_token() {
    let secret = "a-long-one-time-secret-chosen-by-the-operator-42";
    let digest = bootstrap_digest(secret);
    let site = Site::with("", &format!("[tokens]\nbootstrap_sha256 = \"{digest}\"\n"));
    let ask = |bearer: &str| {
        site.cgi("tokens", "GET")
            .query("action=check")
            .header("accept", "application/json")
            .header("authorization", &format!("Bearer {bearer}"))
            .run()
    };
    // A folder the executables cannot write: the report names it.
    let spool = site.var("spool/new");
    std::fs::remove_dir(&spool).expect("rmdir");
    std::fs::write(&spool, b"not a folder").expect("a file in its place");
    let a = ask(secret);
    assert_eq!(a.status, 500, "{}", a.text());
    assert!(a.text().contains("\"name\":\"folders\""), "{}", a.text());
    assert!(a.text().contains("spool"), "{}", a.text());
    assert_eq!(ask(&format!("{secret}x")).status, 401);
    std::fs::remove_file(&spool).expect("rm");
    std::fs::create_dir(&spool).expect("mkdir");
    let ok = ask(secret);
    assert_eq!(ok.status, 200, "{}", ok.text());
    // The first admin token burns the secret for the report as well.
    site.rotate("admin");
    assert_eq!(ask(secret).status, 401);
}

/// A command run as another account (root, or the operator's login where the web server
/// runs CGI as its own) leaves files and shard folders under var/ that the programs cannot
/// read or write (state files are 0600). The check finds them, names one and says what to
/// do; the programs' own files and the operator's uploads are not counted.
#[test]
fn files_of_another_account_under_var_are_named() {
    use std::os::unix::fs::MetadataExt;
    let site = Site::new();
    site.rotate("deploy");
    let (id, answer) = site.challenge("192.0.2.61");
    assert_eq!(site.contact_post(&id, &answer).run().status, 200);
    let (code, report) = check(&site, "captcha");
    assert_eq!(code, 0, "{report}");
    assert!(line(&report, "ownership").starts_with("ok"), "{report}");

    // An uploaded file of another account (FTP under --var-mode shared) is no problem.
    let keep = site.var("state/tokens/.keep");
    std::fs::write(&keep, "").expect("keep");
    let nobody = 65534;
    std::os::unix::fs::chown(&keep, Some(nobody), Some(nobody)).expect("chown");
    let (code, report) = check(&site, "captcha");
    assert_eq!(code, 0, "{report}");

    let me = std::fs::metadata(site.root()).expect("root").uid();
    assert_ne!(me, nobody);
    std::fs::write(site.var("state/mail-quota.toml"), "at = []\n").expect("quota");
    for foreign in [
        site.var("state/tokens/deploy.toml"),
        site.challenge_path(&id)
            .parent()
            .expect("shard")
            .to_path_buf(),
        site.var("state/mail-quota.toml"),
    ] {
        std::os::unix::fs::chown(&foreign, Some(nobody), Some(nobody)).expect("chown");
        let (code, report) = check(&site, "captcha");
        assert_eq!(code, 1, "{}:\n{report}", foreign.display());
        let l = line(&report, "ownership");
        assert!(l.starts_with("FAIL"), "{l}");
        let name = foreign.display().to_string();
        assert!(l.contains(&name), "names {name}: {l}");
        assert!(l.contains("account 65534"), "says whose: {l}");
        assert!(l.contains("same account"), "says what to do: {l}");
        std::os::unix::fs::chown(&foreign, Some(me), Some(me)).expect("chown back");
    }
    let (code, report) = check(&site, "captcha");
    assert_eq!(code, 0, "{report}");
}

/// The check tells an operator who never reads the log that messages need them: given-up
/// messages in failed/ (what to do: fix [mail], requeue) and a full quarantine (suspects
/// are being refused). Waiting messages and a quarantine below its ceiling are fine.
#[test]
fn given_up_messages_and_a_full_quarantine_are_reported() {
    let site = Site::with("", "[spam]\nmin_fill_seconds = 0\nmax_quarantine = 2\n");
    let (code, report) = check(&site, "tokens");
    assert_eq!(code, 0, "{report}");
    assert!(line(&report, "messages").contains("0 waiting"), "{report}");

    // A suspect in the quarantine, below its ceiling: fine.
    let (id, answer) = site.challenge("192.0.2.70");
    let mut form = good_form(&answer);
    form.push(("fw_trap", "x".into()));
    let held = site
        .cgi("contact", "POST")
        .captcha_cookie(&id)
        .form(&form)
        .run();
    assert_eq!(held.status, 200);
    let (code, report) = check(&site, "tokens");
    assert_eq!(code, 0, "{report}");
    assert!(
        line(&report, "messages").contains("1 in quarantine"),
        "{report}"
    );

    // Full: new suspects are refused, which the operator must hear.
    let (id, answer) = site.challenge("192.0.2.71");
    let mut form = good_form(&answer);
    form.push(("fw_trap", "x".into()));
    assert_eq!(
        site.cgi("contact", "POST")
            .captcha_cookie(&id)
            .form(&form)
            .run()
            .status,
        200
    );
    let (code, report) = check(&site, "tokens");
    assert_eq!(code, 1, "{report}");
    let l = line(&report, "messages");
    assert!(
        l.starts_with("FAIL") && l.contains("quarantine is full"),
        "{l}"
    );
    for f in site.ls("spool/quarantine") {
        std::fs::remove_file(site.var(&format!("spool/quarantine/{f}"))).expect("rm");
    }

    // A message given up: FAIL, with what to do.
    let failing = Site::with_mail_lines("max_attempts = 1\n");
    failing.block_mail(true);
    let (id, answer) = failing.challenge("192.0.2.72");
    assert_eq!(failing.contact_post(&id, &answer).run().status, 202);
    let (code, report) = check(&failing, "tokens");
    assert_eq!(code, 1, "{report}");
    let l = line(&report, "messages");
    assert!(l.starts_with("FAIL") && l.contains("1 given up"), "{l}");
    assert!(l.contains("requeue"), "says what to do: {l}");
}
