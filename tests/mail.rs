//! Mail that loses nothing, against a real SMTP server (aiosmtpd) on loopback: the happy
//! path, a server that is down, a server that refuses for good, STARTTLS and implicit TLS
//! with a test CA, AUTH, concurrent retry runs, header injection, the sendmail transport
//! and the file transport of the local preview.

use crate::util::http::Client;
use crate::util::net::{free_port, wait_for_port};
use crate::util::smtp::Smtp;
use crate::util::*;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The SMTP config of these tests. They count attempts and runs of `spool retry` (the
/// cron path), so the after-answer retry step is off here; its own test turns it on.
fn smtp_mail(port: u16, extra: &str) -> String {
    format!(
        "[mail]\nfrom = \"Site <noreply@example.org>\"\nto = [\"owner@example.org\", \"second@example.org\"]\n\
         subject_prefix = \"[Site] \"\ntransport = \"smtp\"\nretry_backoff_seconds = 0\nmax_attempts = 3\n\
         retry_after_answer = false\n\
         [mail.smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntimeout_seconds = 5\nhello_name = \"formwarden.test\"\n{extra}"
    )
}

fn post(site: &Site, fields: &[(&str, String)], id: &str) -> Answer {
    site.cgi("contact", "POST")
        .captcha_cookie(id)
        .form(fields)
        .run()
}

fn post_good(site: &Site) -> Answer {
    let (id, answer) = site.challenge("192.0.2.10");
    site.contact_post(&id, &answer).run()
}

fn header<'a>(mail: &'a str, name: &str) -> Option<&'a str> {
    mail.split("\n\n")
        .next()?
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::trim))
}

#[test]
fn a_form_post_ends_as_exactly_one_message_with_the_right_headers() {
    let tmp = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let smtp = Smtp::start(tmp.path(), port, &[]);
    let site = Site::with_mail("", &smtp_mail(port, "security = \"plain\"\n"));
    let t = Instant::now();
    let a = post_good(&site);
    let elapsed = t.elapsed();
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(a.text().contains("has been sent"));
    eprintln!("POST to message in the mailbox: {elapsed:?}");
    let msgs = smtp.messages();
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(header(m, "From"), Some("Site <noreply@example.org>"));
    assert_eq!(
        header(m, "To"),
        Some("owner@example.org, second@example.org")
    );
    assert_eq!(
        header(m, "Reply-To"),
        Some("\"Ada Lovelace\" <ada@example.net>")
    );
    assert_eq!(header(m, "Subject"), Some("[Site] Hello"));
    assert!(header(m, "Message-ID").is_some_and(|v| v.ends_with("@example.org>")));
    assert!(header(m, "Date").is_some());
    assert!(
        m.contains("Line one\nLine two") || m.contains("Line one\r\nLine two"),
        "{m}"
    );
    assert!(
        site.ls("spool/new").is_empty(),
        "a delivered message leaves the spool"
    );
}

#[test]
fn server_down_keeps_every_message_and_one_retry_delivers_each_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let site = Site::with_mail("", &smtp_mail(port, "security = \"plain\"\n"));
    for _ in 0..5 {
        let a = post_good(&site);
        assert_eq!(
            a.status,
            202,
            "received but not yet delivered: {}",
            a.text()
        );
        assert!(a.text().contains("received and saved"));
    }
    assert_eq!(site.ls("spool/new").len(), 5);
    let smtp = Smtp::start(tmp.path(), port, &[]);
    let t = Instant::now();
    let out = site.cli("spool", &["retry"]);
    eprintln!("retry of 5 messages: {:?}", t.elapsed());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("delivered 5"));
    assert_eq!(smtp.messages().len(), 5);
    assert!(site.ls("spool/new").is_empty());
    // A second run finds nothing left to send, and says nothing (cron mails any output).
    let again = site.cli("spool", &["retry"]);
    assert!(again.status.success());
    assert_eq!(String::from_utf8_lossy(&again.stdout), "");
    assert_eq!(
        String::from_utf8_lossy(&again.stderr),
        "",
        "nothing logged either"
    );
    let verbose = site.cli("spool", &["retry", "--verbose"]);
    assert!(String::from_utf8_lossy(&verbose.stdout).contains("delivered 0"));
    assert_eq!(smtp.messages().len(), 5);
}

#[test]
fn two_concurrent_retry_runs_deliver_fifty_messages_exactly_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let smtp = Smtp::start(tmp.path(), port, &[]);
    let site = Site::with_mail("", &smtp_mail(port, "security = \"plain\"\n"));
    let spool = formwarden::spool::Spool::new(site.var("spool"));
    let now = formwarden::state::now();
    for i in 0..50 {
        let c = formwarden::form::Contact {
            name: format!("Sender {i}"),
            email: format!("s{i}@example.net"),
            subject: format!("n{i}"),
            message: "hi".into(),
        };
        spool.save(&c, now, "example.org").expect("spool");
    }
    let spawn = || {
        Command::new(exe("spool"))
            .arg("retry")
            .env_clear()
            .env("FORMWARDEN_ROOT", site.root())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spool retry")
    };
    let t = Instant::now();
    let (a, b) = (spawn(), spawn());
    let (oa, ob) = (
        a.wait_with_output().expect("a"),
        b.wait_with_output().expect("b"),
    );
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "two retry runs: {} / {} — {:.0} messages/s",
        String::from_utf8_lossy(&oa.stdout).trim(),
        String::from_utf8_lossy(&ob.stdout).trim(),
        50.0 / secs
    );
    let msgs = smtp.messages();
    let mut ids: Vec<&str> = msgs
        .iter()
        .filter_map(|m| header(m, "Message-ID"))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(msgs.len(), 50, "every message delivered once");
    assert_eq!(ids.len(), 50, "no duplicates");
    assert!(site.ls("spool/new").is_empty());
    assert!(
        site.files("lock").iter().all(|f| !f.starts_with("spool_")),
        "claimed messages leave no lock files behind"
    );
}

#[test]
fn a_permanent_refusal_ends_in_failed_after_the_configured_attempts() {
    let tmp = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let _smtp = Smtp::start(tmp.path(), port, &["--reject"]);
    let site = Site::with_mail(
        "",
        &smtp_mail(port, "security = \"plain\"\n").replace("max_attempts = 3", "max_attempts = 2"),
    );
    let a = post_good(&site);
    assert_eq!(a.status, 202);
    assert_eq!(site.ls("spool/new").len(), 1);
    let out = site.cli("spool", &["retry"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a retry that gave up tells cron"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("moved to failed/"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(site.ls("spool/new").is_empty());
    let failed = site.ls("spool/failed");
    assert_eq!(failed.len(), 1, "never deleted silently");
    let text = std::fs::read_to_string(site.var(&format!("spool/failed/{}", failed[0])))
        .expect("failed entry");
    assert!(
        text.contains("550") && text.contains("attempts = 2"),
        "{text}"
    );
    let list = site.cli("spool", &["list", "failed"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("550"));
    // Requeue puts it back with fresh counters.
    let id = failed[0].trim_end_matches(".toml");
    assert!(site.cli("spool", &["requeue", id]).status.success());
    assert_eq!(site.ls("spool/new").len(), 1);
}

#[test]
fn starttls_and_implicit_tls_trust_the_configured_ca_only() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (ca, cert, key) = test_ca(tmp.path());
    let (cert, key) = (cert.display().to_string(), key.display().to_string());

    let port = free_port();
    let smtp = Smtp::start(
        tmp.path(),
        port,
        &["--starttls", &cert, &key, "--auth", "contact:s3cret"],
    );
    let ok = format!(
        "security = \"starttls\"\nca_file = \"{}\"\nusername = \"contact\"\npassword = \"s3cret\"\n",
        ca.display()
    );
    let site = Site::with_mail("", &smtp_mail(port, &ok));
    assert_eq!(post_good(&site).status, 200);
    assert_eq!(smtp.messages().len(), 1);

    // Without the CA the server's certificate is refused: nothing is sent, nothing lost.
    let site = Site::with_mail(
        "",
        &smtp_mail(
            port,
            "security = \"starttls\"\nusername = \"contact\"\npassword = \"s3cret\"\n",
        ),
    );
    assert_eq!(post_good(&site).status, 202);
    assert_eq!(smtp.messages().len(), 1);
    let list = String::from_utf8_lossy(&site.cli("spool", &["list"]).stdout).to_string();
    assert!(
        list.to_lowercase().contains("certificate")
            || list.to_lowercase().contains("unknownissuer"),
        "{list}"
    );

    // A wrong password defers too.
    let bad = ok.replace("s3cret", "wrong");
    let site = Site::with_mail("", &smtp_mail(port, &bad));
    assert_eq!(post_good(&site).status, 202);
    assert_eq!(smtp.messages().len(), 1);

    let port = free_port();
    let smtps = Smtp::start(tmp.path(), port, &["--implicit-tls", &cert, &key]);
    let site = Site::with_mail(
        "",
        &smtp_mail(
            port,
            &format!("security = \"tls\"\nca_file = \"{}\"\n", ca.display()),
        ),
    );
    assert_eq!(post_good(&site).status, 200);
    assert_eq!(smtps.messages().len(), 1);
}

#[test]
fn header_injection_in_any_field_is_refused_before_anything_is_saved_or_sent() {
    let tmp = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let smtp = Smtp::start(tmp.path(), port, &[]);
    let site = Site::with_mail("", &smtp_mail(port, "security = \"plain\"\n"));
    let (id, answer) = site.challenge("192.0.2.10");
    let attacks = [
        "x\r\nBcc: victim@example.com",
        "x\nBcc: victim@example.com",
        "x\rBcc: victim@example.com",
        "x\u{2028}Bcc: victim@example.com",
        "x\u{2029}Bcc: v@e.com",
        "x\u{85}Bcc: v@e.com",
    ];
    for field in ["name", "email", "subject"] {
        for attack in attacks {
            let mut form = good_form(&answer);
            for (k, v) in form.iter_mut() {
                if *k == field {
                    *v = attack.to_string();
                }
            }
            assert_eq!(post(&site, &form, &id).status, 422, "{field} {attack:?}");
        }
        // The percent-encoded form as a raw body, as a bot would send it.
        let raw = format!("name=Ada&email=a%40b.de&subject=Hi&message=m&captcha={answer}").replace(
            &format!("{field}="),
            &format!("{field}=x%0d%0aBcc:%20v%40e.com"),
        );
        let a = site
            .cgi("contact", "POST")
            .captcha_cookie(&id)
            .body("application/x-www-form-urlencoded", raw.as_bytes())
            .run();
        assert_eq!(a.status, 422, "{raw}");
    }
    assert!(site.ls("spool/new").is_empty(), "nothing saved");
    assert!(smtp.messages().is_empty(), "nothing sent");
    // The challenge is still good for an honest message afterwards.
    assert_eq!(post(&site, &good_form(&answer), &id).status, 200);
}

#[test]
fn sendmail_transport_pipes_the_message_to_the_configured_program() {
    let tmp = tempfile::tempdir().expect("tmp");
    let record = tmp.path().join("record");
    std::fs::create_dir_all(&record).expect("mkdir");
    let stand_in = tmp.path().join("sendmail");
    std::fs::write(
        &stand_in,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > {r}/args\ncat > {r}/input\n",
            r = record.display()
        ),
    )
    .expect("script");
    let mut perm = std::fs::metadata(&stand_in).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&stand_in, perm).expect("chmod");
    let mail = format!(
        "[mail]\nfrom = \"Site <noreply@example.org>\"\nto = [\"owner@example.org\"]\ntransport = \"sendmail\"\n[mail.sendmail]\ncommand = \"{}\"\n",
        stand_in.display()
    );
    let site = Site::with_mail("", &mail);
    assert_eq!(post_good(&site).status, 200);
    let args = std::fs::read_to_string(record.join("args")).expect("args");
    assert_eq!(
        args.lines().collect::<Vec<_>>(),
        ["-i", "-f", "noreply@example.org", "--", "owner@example.org"]
    );
    let input = std::fs::read_to_string(record.join("input")).expect("input");
    assert!(
        input.contains("Reply-To: \"Ada Lovelace\" <ada@example.net>")
            && input.contains("Line two"),
        "{input}"
    );
    assert!(site.ls("spool/new").is_empty());

    // A failing sendmail keeps the message.
    std::fs::write(
        &stand_in,
        "#!/bin/sh\necho 'sendmail: queue full' >&2\nexit 75\n",
    )
    .expect("script");
    assert_eq!(post_good(&site).status, 202);
    assert_eq!(site.ls("spool/new").len(), 1);
}

/// Starts the local preview on `root` (which must hold `deploy/site`) and waits until it
/// accepts connections. The caller kills it.
fn start_preview(root: &Path) -> (Child, u16) {
    std::fs::create_dir_all(root.join("deploy")).expect("mkdir");
    std::os::unix::fs::symlink(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/site"),
        root.join("deploy/site"),
    )
    .expect("link");
    let port = free_port();
    let child = Command::new(exe("preview"))
        .args(["--port", &port.to_string(), "--root"])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("preview");
    assert!(
        wait_for_port(port, Duration::from_secs(10)),
        "preview did not start"
    );
    (child, port)
}

#[test]
fn the_local_preview_serves_the_page_and_writes_mail_as_files() {
    // The preview serves ROOT/deploy/site; it gets the real example site.
    let site = Site::new();
    let (mut preview, port) = start_preview(site.root());
    let mut browser = Client::new(port);
    let page = browser.get("/");
    assert_eq!(page.status, 200, "{}", page.describe());
    assert!(page.text().contains("/cgi-bin/contact"));
    let image = browser.get("/cgi-bin/captcha");
    assert_eq!(image.status, 200, "{}", image.describe());
    assert!(image.body.starts_with(b"\x89PNG"));
    assert!(
        browser.cookie("fw_captcha").is_some(),
        "{}",
        image.describe()
    );
    let answer = image
        .header("x-formwarden-test-answer")
        .expect("answer")
        .to_string();
    let sent = browser.post_form("/cgi-bin/contact", &good_form(&answer));
    let _ = preview.kill();
    let _ = preview.wait();
    assert_eq!(sent.status, 200, "{}", sent.describe());
    let files = site.ls("mail-out");
    assert_eq!(files.len(), 1);
    assert!(files[0].ends_with(".eml"));
    let eml = std::fs::read_to_string(site.var(&format!("mail-out/{}", files[0]))).expect("eml");
    assert!(eml.contains("Subject: [Contact] Hello"));
}

#[test]
fn the_preview_creates_a_fresh_config_with_a_random_salt() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut preview, _) = start_preview(dir.path());
    let _ = preview.kill();
    let _ = preview.wait();
    let config =
        std::fs::read_to_string(dir.path().join("var/config/config.toml")).expect("config created");
    let salt = config
        .lines()
        .find_map(|l| l.strip_prefix("ip_salt = \""))
        .expect("salt");
    assert!(salt.trim_end_matches('"').len() >= 32);
    assert!(
        formwarden::config::Config::load(&dir.path().join("var/config/config.toml")).is_ok(),
        "the created config is valid"
    );
}

#[test]
fn delivered_messages_are_archived_in_a_bounded_sent_folder_when_configured() {
    // A relative mail folder is resolved under the runtime root.
    let site = Site::with_mail(
        "",
        "[mail]\nfrom = \"Site <noreply@example.org>\"\nto = [\"owner@example.org\"]\ntransport = \"file\"\nkeep_sent = 2\n[mail.file]\ndir = \"var/mail-out\"\n",
    );
    for _ in 0..3 {
        assert_eq!(post_good(&site).status, 200);
    }
    assert!(site.ls("spool/new").is_empty());
    assert_eq!(
        site.ls("spool/sent").len(),
        2,
        "only the newest two are kept"
    );
}

/// Issue 12, item 4: delivery without cron. With the SMTP server down the POST answers
/// 202; once it is up, a later unrelated request (a CAPTCHA GET) delivers the message in a
/// retry step that starts only after that request's own answer is complete (stdout closed).
#[test]
fn a_later_request_delivers_a_queued_message_after_its_own_answer() {
    let tmp = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let mail = smtp_mail(port, "security = \"plain\"\n").replace(
        "retry_after_answer = false\n",
        "retry_after_answer = true\n",
    );
    let site = Site::with_mail("", &mail);
    let a = post_good(&site);
    assert_eq!(a.status, 202, "{}", a.text());
    assert_eq!(site.ls("spool/new").len(), 1);
    let smtp = Smtp::start(tmp.path(), port, &[]);

    let mut child = site.cgi("captcha", "GET").remote_addr("192.0.2.77").spawn();
    let mut stdout = child.stdout.take().expect("stdout");
    let mut answer = Vec::new();
    stdout.read_to_end(&mut answer).expect("read the answer");
    let answered = std::time::SystemTime::now();
    assert!(
        answer.starts_with(b"Status: 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let status = child.wait().expect("wait");
    assert!(status.success());
    let messages = smtp.messages();
    assert_eq!(messages.len(), 1, "the queued message went out");
    assert!(site.ls("spool/new").is_empty());
    let arrived = std::fs::read_dir(smtp.maildir.join("new"))
        .expect("maildir")
        .flatten()
        .filter_map(|e| e.metadata().and_then(|m| m.modified()).ok())
        .min()
        .expect("a message file");
    assert!(
        arrived >= answered,
        "the delivery happened after the answer was complete"
    );
    // With nothing left, the next request finds nothing to do.
    let again = site.cgi("captcha", "GET").remote_addr("192.0.2.78").run();
    assert_eq!(again.status, 200);
    assert_eq!(smtp.messages().len(), 1, "sent once");
}

/// Issue 12, item 5: the host's mail quota. With `max_per_hour = 3`, six concurrent POSTs
/// deliver exactly three; the rest stay spooled (202), retry runs send nothing more in the
/// same hour, and once the hour has passed two concurrent retry runs send the rest, each
/// message exactly once and never more than three in any hour.
#[test]
fn the_mail_quota_holds_messages_back_and_never_loses_one() {
    let site = Site::with_mail(
        "",
        "[mail]\nfrom = \"Site <noreply@example.org>\"\nto = [\"owner@example.org\"]\n\
         transport = \"file\"\nmax_per_hour = 3\nretry_backoff_seconds = 0\n\
         retry_after_answer = false\n[mail.file]\ndir = \"var/mail-out\"\n",
    );
    let posts: Vec<Cgi> = (0..6)
        .map(|i| {
            let addr = format!("192.0.2.{}", 30 + i);
            let (id, answer) = site.challenge(&addr);
            site.contact_post(&id, &answer).remote_addr(&addr)
        })
        .collect();
    let answers = collect(posts.iter().map(Cgi::spawn).collect());
    let sent = answers.iter().filter(|a| a.status == 200).count();
    let queued = answers.iter().filter(|a| a.status == 202).count();
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    // Never more than the quota at once. Fewer is allowed: on a loaded machine a post's
    // first delivery attempt can find the quota's lock busy past its bound and leave the
    // message for the retry run (seen once in CI as 2 sent, 4 queued), which is what the
    // retry below must then make up for.
    assert!(sent <= 3, "{statuses:?}");
    assert_eq!(sent + queued, 6, "every post saved: {statuses:?}");
    assert_eq!(site.ls("mail-out").len(), sent);
    assert_eq!(site.ls("spool/new").len(), queued);
    let out = site.cli("spool", &["retry"]);
    assert!(
        out.status.success(),
        "waiting for the quota is not a failure"
    );
    assert_eq!(
        (site.ls("mail-out").len(), site.ls("spool/new").len()),
        (3, 3),
        "the quota filled and nothing more in the same hour"
    );

    site.advance_clock(3601);
    let runs: Vec<_> = (0..2)
        .map(|_| {
            Command::new(exe("spool"))
                .arg("retry")
                .env_clear()
                .env("FORMWARDEN_ROOT", site.root())
                .env(CLOCK_SKEW_ENV, "3601")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("retry")
        })
        .collect();
    for r in runs {
        let r = r.wait_with_output().expect("wait");
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    assert_eq!(site.ls("mail-out").len(), 6, "every message went out once");
    assert!(site.ls("spool/new").is_empty());
}

/// A sendmail stand-in that always fails temporarily (EX_TEMPFAIL), and the `[mail]`
/// section that uses it with `extra` settings.
fn failing_sendmail(dir: &Path, extra: &str) -> String {
    let stand_in = dir.join("sendmail");
    std::fs::write(
        &stand_in,
        "#!/bin/sh\ncat >/dev/null\necho 'sendmail: queue full' >&2\nexit 75\n",
    )
    .expect("script");
    let mut perm = std::fs::metadata(&stand_in).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&stand_in, perm).expect("chmod");
    format!(
        "[mail]\nfrom = \"Site <noreply@example.org>\"\nto = [\"owner@example.org\"]\n\
         transport = \"sendmail\"\n{extra}[mail.sendmail]\ncommand = \"{}\"\n",
        stand_in.display()
    )
}

/// The spooled entry of message `name` in `folder`, as text.
fn entry(site: &Site, folder: &str, name: &str) -> String {
    std::fs::read_to_string(site.var(&format!("spool/{folder}/{name}"))).expect("spool entry")
}

#[test]
fn the_backoff_spaces_attempts_and_max_age_gives_up_then_requeue_all_restarts_them() {
    let tmp = tempfile::tempdir().expect("tmp");
    let site = Site::with_mail(
        "",
        &failing_sendmail(
            tmp.path(),
            "retry_backoff_seconds = 600\nmax_age_hours = 1\nmax_attempts = 10\nretry_after_answer = false\n",
        ),
    );
    // Two messages, each tried once at once (and failed): 202, kept.
    assert_eq!(post_good(&site).status, 202);
    assert_eq!(post_good(&site).status, 202);
    let names = site.ls("spool/new");
    assert_eq!(names.len(), 2);
    let retry = |site: &Site| {
        let out = site.cli("spool", &["retry", "--verbose"]);
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    };
    let attempts = |site: &Site| -> Vec<String> {
        names
            .iter()
            .map(|n| {
                entry(site, "new", n)
                    .lines()
                    .find(|l| l.starts_with("attempts = "))
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    };

    // Inside the first backoff (600 s) nothing is tried.
    let out = retry(&site);
    assert!(
        out.contains("delivered 0 deferred 0 failed 0 busy 0 waiting 2"),
        "{out}"
    );
    assert_eq!(attempts(&site), ["attempts = 1", "attempts = 1"]);
    // After it, both are tried again; the next wait is twice as long (1,200 s).
    site.advance_clock(601);
    let out = retry(&site);
    assert!(out.contains("deferred 2"), "{out}");
    assert_eq!(attempts(&site), ["attempts = 2", "attempts = 2"]);
    site.advance_clock(601);
    let out = retry(&site);
    assert!(
        out.contains("waiting 2"),
        "the doubled backoff holds: {out}"
    );
    assert_eq!(attempts(&site), ["attempts = 2", "attempts = 2"]);

    // Past max_age_hours (1 h since they were received), the next due run gives up on
    // both: moved to failed/ with the reason, never deleted.
    site.advance_clock(3600);
    let out = retry(&site);
    assert!(
        out.contains("failed 2") && out.contains("older than 1 hours"),
        "{out}"
    );
    assert!(site.ls("spool/new").is_empty());
    assert_eq!(site.ls("spool/failed").len(), 2);

    // `requeue all` brings both back with fresh counters; the age counts from the requeue.
    let out = site.cli("spool", &["requeue", "all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "requeued 2 message(s)"
    );
    assert!(site.ls("spool/failed").is_empty());
    assert_eq!(attempts(&site), ["attempts = 0", "attempts = 0"]);
    let out = retry(&site);
    assert!(
        out.contains("deferred 2"),
        "tried again, not given up: {out}"
    );
}

#[test]
fn an_unreadable_spool_entry_is_parked_in_failed_with_a_logged_reason() {
    let site = Site::new();
    let name = "1767225600-0123456789abcdef.toml";
    std::fs::write(
        site.var(&format!("spool/new/{name}")),
        "this is = not [ a message",
    )
    .expect("corrupt entry");
    let out = site.cli("spool", &["retry"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "cron hears of it: {log}");
    assert!(
        log.contains("unreadable") && log.contains("moved to failed/"),
        "{log}"
    );
    assert!(site.ls("spool/new").is_empty());
    assert_eq!(site.ls("spool/failed"), [name], "parked, byte for byte");
    assert_eq!(entry(&site, "failed", name), "this is = not [ a message");
}
