//! Faults of the file system under `var/`: a file where a state folder should be (for
//! every state folder the layout names), a folder where a state file should be (for every
//! kind of state file), and `var/` remounted read-only. In each case a
//! visitor gets a controlled answer (never a crash, never a 2xx for a message that was
//! not saved, never a server path), the contact form says "NOT received" when it could not
//! save, and once the fault is gone the next request works.

use crate::util::*;
use std::path::Path;

/// A contact POST's answer is honest: 2xx only with the message stored, else a 5xx that
/// tells the visitor it was NOT received.
fn assert_honest_post(site: &Site, a: &Answer, stored_before: usize, what: &str) {
    let stored = site.ls("spool/new").len() + site.delivered();
    match a.status {
        200 | 202 => assert_eq!(
            stored,
            stored_before + 1,
            "{what}: a 2xx means it is stored"
        ),
        500 | 503 => {
            assert!(a.text().contains("NOT received"), "{what}: {}", a.text());
            assert_eq!(stored, stored_before, "{what}: nothing half-stored");
        }
        other => panic!("{what}: unexpected status {other}: {}", a.text()),
    }
    assert!(
        a.code == Some(0),
        "{what}: the process ended normally: {:?}",
        a.code
    );
    site.assert_shows_no_path(a, what);
}

#[test]
fn a_file_where_any_state_folder_should_be_gives_controlled_answers_and_loses_nothing() {
    let probe = Site::new();
    let folders: Vec<String> = formwarden::layout::Layout::new(probe.root())
        .state_dirs()
        .iter()
        .map(|d| {
            d.strip_prefix(probe.var(""))
                .expect("under var/")
                .display()
                .to_string()
        })
        .collect();
    assert!(folders.len() >= 7, "{folders:?}");
    for folder in folders {
        let site = Site::new();
        let addr = "198.51.100.90";
        let (id, answer) = site.challenge(addr);
        let dir = site.var(&folder);
        std::fs::remove_dir_all(&dir).expect("remove folder");
        std::fs::write(&dir, "not a folder").expect("a file in its place");

        let post = site.contact_post(&id, &answer).remote_addr(addr).run();
        assert_honest_post(&site, &post, 0, &folder);
        let get = site
            .cgi("captcha", "GET")
            .remote_addr("198.51.100.91")
            .run();
        assert!(
            matches!(get.status, 200 | 500 | 503),
            "{folder}: CAPTCHA GET {}: {}",
            get.status,
            get.text()
        );
        assert_eq!(get.code, Some(0), "{folder}");

        // The operator puts the folder back: everything works again.
        std::fs::remove_file(&dir).expect("remove the file");
        let stored = site.ls("spool/new").len() + site.delivered();
        let (id, answer) = site.challenge("198.51.100.92");
        let again = site
            .contact_post(&id, &answer)
            .remote_addr("198.51.100.92")
            .run();
        assert!(
            matches!(again.status, 200 | 202),
            "{folder}: back: {}",
            again.text()
        );
        assert_honest_post(&site, &again, stored, &format!("{folder}, restored"));
    }
}

/// Puts an empty folder where the state file `path` should be (the state file, if any,
/// goes first), as a botched FTP upload or a stray `mkdir` leaves it.
fn plant_folder(path: &Path) {
    if path.is_file() {
        std::fs::remove_file(path).expect("remove the state file");
    }
    std::fs::create_dir_all(path).expect("a folder in its place");
}

/// An answer a visitor may get while a state file is a folder: controlled (the process
/// ends normally) and free of server paths.
fn assert_controlled(site: &Site, a: &Answer, what: &str) {
    assert_eq!(a.code, Some(0), "{what}: the process ended normally");
    site.assert_shows_no_path(a, what);
}

#[test]
fn a_folder_where_any_state_file_should_be_gives_controlled_answers_and_loses_nothing() {
    // The rate-limit window: the visitor is answered in a controlled way, never let through
    // uncounted with a crash, and counting works again once the folder is gone.
    let site = Site::new();
    let addr = "198.51.100.93";
    let window = site.window_path(addr);
    plant_folder(&window);
    let get = site.cgi("captcha", "GET").remote_addr(addr).run();
    assert!(
        matches!(get.status, 500 | 503),
        "window: {} {}",
        get.status,
        get.text()
    );
    assert_controlled(&site, &get, "window");
    std::fs::remove_dir(&window).expect("operator removes the folder");
    assert_eq!(
        site.cgi("captcha", "GET").remote_addr(addr).run().status,
        200
    );
    assert_eq!(site.stored_count(addr, "captcha_get"), Some(1), "window");

    // The challenge: a folder never passes as a solved CAPTCHA, and nothing is sent.
    let site = Site::new();
    let addr = "198.51.100.94";
    let (id, answer) = site.challenge(addr);
    let challenge = site.challenge_path(&id);
    plant_folder(&challenge);
    let post = site.contact_post(&id, &answer).remote_addr(addr).run();
    assert!(
        matches!(post.status, 403 | 500 | 503),
        "challenge: {} {}",
        post.status,
        post.text()
    );
    assert_honest_post(&site, &post, 0, "challenge");
    std::fs::remove_dir(&challenge).expect("operator removes the folder");
    let (id, answer) = site.challenge(addr);
    let again = site.contact_post(&id, &answer).remote_addr(addr).run();
    assert_eq!(again.status, 200, "challenge, restored: {}", again.text());

    // The token list: verification fails closed, a rotation fails with a clear message
    // (and no panic) instead of replacing a folder, and works once the folder is gone.
    let site = Site::new();
    let old = site.rotate("deploy");
    let list = site.var("state/tokens/deploy.toml");
    plant_folder(&list);
    let verify = |token: &str| {
        site.cgi("tokens", "GET")
            .query("profile=deploy")
            .header("authorization", &format!("Bearer {token}"))
            .run()
    };
    let a = verify(&old);
    assert!(
        matches!(a.status, 401 | 500 | 503),
        "token list: fails closed, never 204: {} {}",
        a.status,
        a.text()
    );
    assert_controlled(&site, &a, "token list");
    let out = site.tokens_cli(&["rotate", "deploy"]);
    let err = String::from_utf8_lossy(&out.stderr);
    // 2 is the command line's runtime error (admin.rs); the message names the file.
    assert_eq!(
        out.status.code(),
        Some(2),
        "token list: a clear refusal: {err}"
    );
    assert!(
        err.contains("deploy.toml"),
        "token list: names the file: {err}"
    );
    assert!(!err.contains("panicked"), "token list: {err}");
    assert!(
        list.is_dir(),
        "token list: the folder is left for the operator"
    );
    std::fs::remove_dir(&list).expect("operator removes the folder");
    let fresh = site.rotate("deploy");
    assert_eq!(verify(&fresh).status, 204, "token list, restored");

    // The mail quota (kept only when a limit is set): the message is still saved (the
    // quota only paces delivery) or clearly refused, and mail goes out again once the
    // folder is gone.
    let site = Site::with_mail_lines("max_per_hour = 50\n");
    let quota = site.var("state/mail-quota.toml");
    let send = |addr: &str| {
        let (id, answer) = site.challenge(addr);
        site.contact_post(&id, &answer).remote_addr(addr).run()
    };
    assert_eq!(
        send("198.51.100.95").status,
        200,
        "mail quota: the file exists"
    );
    assert!(quota.is_file(), "mail quota: kept");
    plant_folder(&quota);
    let post = send("198.51.100.96");
    assert_honest_post(&site, &post, 1, "mail quota");
    assert_eq!(
        post.status,
        202,
        "mail quota: saved, delivery later: {}",
        post.text()
    );
    assert_eq!(
        site.ls("spool/new").len(),
        1,
        "mail quota: waits in the spool"
    );
    std::fs::remove_dir(&quota).expect("operator removes the folder");
    let stored = site.ls("spool/new").len() + site.delivered();
    let again = send("198.51.100.97");
    assert_eq!(again.status, 200, "mail quota, restored: {}", again.text());
    assert_honest_post(&site, &again, stored, "mail quota, restored");
    // The message that waited goes out with the next retry.
    site.advance_clock(24 * 3600);
    let retry = site.cli("spool", &["retry"]);
    assert!(
        retry.status.success(),
        "{}",
        String::from_utf8_lossy(&retry.stderr)
    );
    assert_eq!(
        (site.ls("spool/new").len(), site.delivered()),
        (0, 3),
        "mail quota: every message delivered"
    );

    // A spool entry: a folder with an older entry's name in spool/new is never taken for a
    // message, and it does not stand in the way of the messages behind it, neither for
    // cron's retry run nor for the retry step after a visitor's answer.
    let site = Site::new();
    let send = |addr: &str| {
        let (id, answer) = site.challenge(addr);
        site.contact_post(&id, &answer).remote_addr(addr).run()
    };
    // The transport's folder is a file for a moment: the messages wait in the spool.
    site.block_mail(true);
    for addr in ["198.51.100.101", "198.51.100.102"] {
        assert_eq!(send(addr).status, 202, "spool entry: spooled");
    }
    site.block_mail(false);
    let entry = site.var("spool/new/1700000000-0000000000000000.toml");
    plant_folder(&entry);
    site.advance_clock(24 * 3600);

    let step = site
        .cgi("captcha", "GET")
        .remote_addr("198.51.100.103")
        .run();
    assert_eq!(step.status, 200, "spool entry: {}", step.text());
    assert_eq!(
        site.delivered(),
        1,
        "spool entry: the retry step went past it: {}",
        step.stderr
    );
    let retry = site.cli("spool", &["retry"]);
    let err = String::from_utf8_lossy(&retry.stderr);
    assert!(!err.contains("panicked"), "spool entry: {err}");
    assert_eq!(
        site.delivered(),
        2,
        "spool entry: the retry run went past it: {err}"
    );
    assert_eq!(
        retry.status.code(),
        Some(1),
        "spool entry: cron hears that something stays: {err}"
    );
    assert!(
        err.contains("1700000000-0000000000000000"),
        "spool entry: the log names it: {err}"
    );
    assert!(entry.is_dir(), "spool entry: left for the operator");

    // The sweep marker: the sweep that every request may run must not take a request down
    // with it; the operator's spool command works again once the folder is gone.
    let site = Site::new();
    let marker = site.var("tmp/sweep.toml");
    plant_folder(&marker);
    for i in 0..3 {
        let a = site
            .cgi("captcha", "GET")
            .remote_addr(&format!("198.51.100.{}", 97 + i))
            .run();
        assert_eq!(a.status, 200, "sweep marker: {}", a.text());
        assert_controlled(&site, &a, "sweep marker");
    }
    std::fs::remove_dir(&marker).expect("operator removes the folder");
    let (id, answer) = site.challenge("198.51.100.100");
    let post = site
        .contact_post(&id, &answer)
        .remote_addr("198.51.100.100")
        .run();
    assert_eq!(post.status, 200, "sweep marker, restored: {}", post.text());
}

/// Remounts the file system at `at` read-only (`true`) or read-write.
fn remount(at: &Path, read_only: bool) {
    let mode = if read_only {
        "remount,ro"
    } else {
        "remount,rw"
    };
    let out = std::process::Command::new("mount")
        .args(["-o", mode])
        .arg(at)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_read_only_var_refuses_clearly_keeps_verifying_tokens_and_recovers() {
    let site = Site::new();
    let _disk = site.on_small_disk();
    let secret = site.rotate("deploy");
    let (id, answer) = site.challenge("198.51.100.93");
    remount(&site.var(""), true);

    let post = site
        .contact_post(&id, &answer)
        .remote_addr("198.51.100.93")
        .run();
    let get = site
        .cgi("captcha", "GET")
        .remote_addr("198.51.100.94")
        .run();
    let verify = site
        .cgi("tokens", "GET")
        .query("profile=deploy")
        .header("authorization", &format!("Bearer {secret}"))
        .run();
    remount(&site.var(""), false);

    assert!(matches!(post.status, 500 | 503), "{}", post.text());
    assert_honest_post(&site, &post, 0, "read-only var/");
    assert!(matches!(get.status, 500 | 503), "{}", get.text());
    assert_eq!(
        verify.status,
        204,
        "token verification only reads: {}",
        verify.text()
    );

    let (id, answer) = site.challenge("198.51.100.95");
    let again = site
        .contact_post(&id, &answer)
        .remote_addr("198.51.100.95")
        .run();
    assert_honest_post(&site, &again, 0, "writable again");
    assert!(matches!(again.status, 200 | 202));
}

/// `spool requeue all` (and its HTTP twin) goes past a failed entry it cannot read, as the
/// retry run does: a folder with an older message's name in `spool/failed/` must not keep
/// the messages behind it from being sent again.
#[test]
fn requeue_all_goes_past_a_failed_entry_it_cannot_read() {
    let site = Site::with_mail_lines("max_attempts = 1\n");
    site.block_mail(true);
    let (id, answer) = site.challenge("198.51.100.110");
    let post = site
        .contact_post(&id, &answer)
        .remote_addr("198.51.100.110")
        .run();
    assert_eq!(post.status, 202, "{}", post.text());
    let failed = site.ls("spool/failed");
    assert_eq!(failed.len(), 1, "given up after one attempt");
    site.block_mail(false); // The operator fixes it.
    let broken = site.var("spool/failed/1700000000-0000000000000000.toml");
    plant_folder(&broken);

    let out = site.cli("spool", &["requeue", "all"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        site.ls("spool/new"),
        failed,
        "the real one is requeued: {stderr}"
    );
    assert!(stdout.contains("requeued 1"), "{stdout} {stderr}");
    assert!(
        stdout.contains("cannot be read") && stdout.contains("1700000000-0000000000000000"),
        "the operator hears which one, without the log: {stdout}"
    );
    assert!(
        stderr.contains("1700000000-0000000000000000"),
        "the log names it: {stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "not everything was requeued");
    assert!(broken.is_dir(), "left for the operator");
}

/// A message that went out but could not be filed into `spool/sent/` (here that folder is
/// another file system, as a symlink to another disk makes it, so the rename fails with
/// EXDEV) is sent once: it is taken out of `new/` all the same, without its copy in
/// `sent/`, so no later retry sends it again.
#[test]
fn a_broken_sent_folder_never_makes_a_message_go_out_twice() {
    let site = Site::with_mail_lines("keep_sent = 5\n");
    let _other_disk = Tmpfs::mount(&site.var("spool/sent"), "1m");
    for i in 0..3 {
        let addr = format!("198.51.100.{}", 130 + i);
        let (id, answer) = site.challenge(&addr);
        let post = site.contact_post(&id, &answer).remote_addr(&addr).run();
        assert_eq!(post.status, 200, "it went out: {}", post.text());
        assert!(post.stderr.contains("sent/"), "logged: {}", post.stderr);
    }
    assert_eq!(site.delivered(), 3);
    assert!(site.ls("spool/new").is_empty(), "none left to send again");
    // Later visitors and cron's retry send nothing again.
    for i in 0..3 {
        let get = site
            .cgi("captcha", "GET")
            .remote_addr(&format!("198.51.100.{}", 140 + i))
            .run();
        assert_eq!(get.status, 200);
    }
    site.advance_clock(24 * 3600);
    let retry = site.cli("spool", &["retry"]);
    assert!(
        retry.status.success(),
        "{}",
        String::from_utf8_lossy(&retry.stderr)
    );
    assert_eq!(site.delivered(), 3, "each message went out once");
}
