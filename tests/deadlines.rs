//! Issue 7, item 3: nothing pins a handler. A `sendmail` that never exits is killed after
//! its timeout (the message stays spooled, the visitor gets the 202 answer), and every
//! request has an overall deadline: a request stuck in a call without a timeout of its own
//! (here: opening a FIFO that stands where the page template belongs, as a hung network
//! file system would) is answered by a watchdog, under CGI and under FastCGI, and a
//! FastCGI responder goes on serving others.

use crate::fastcgi::client::FastCgi;
use crate::fastcgi::responder::Spawn;
use crate::util::*;
use std::path::Path;
use std::thread;
use std::time::Duration;

/// A `sendmail` that reads nothing and never exits; its child keeps the pipes open too.
/// `marker` is the sleep's argument, by which leftover processes are found.
fn hung_sendmail(dir: &Path, marker: u32) -> std::path::PathBuf {
    let path = dir.join("hung-sendmail");
    std::fs::write(
        &path,
        format!("#!/bin/sh\nsleep {marker} &\nsleep {marker}\n"),
    )
    .expect("script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn sendmail_site(marker: u32) -> Site {
    let site = Site::new();
    let script = hung_sendmail(site.root(), marker);
    let config = std::fs::read_to_string(site.var("config/config.toml")).expect("config");
    let start = config.find("[mail]").expect("a mail section");
    let mail = format!(
        "[mail]\nfrom = \"form@example.org\"\nto = [\"owner@example.org\"]\n\
         transport = \"sendmail\"\n[mail.sendmail]\ncommand = \"{}\"\ntimeout_seconds = 1\n",
        script.display()
    );
    std::fs::write(
        site.var("config/config.toml"),
        format!("{}{mail}", &config[..start]),
    )
    .expect("config");
    site
}

/// Processes (not zombies) whose command line holds `sleep {marker}`.
fn sleepers(marker: u32) -> usize {
    let needle = format!("sleep\0{marker}");
    procs::all()
        .into_iter()
        .filter(|&pid| {
            procs::running(pid) && procs::cmdline(pid).is_some_and(|c| c.contains(&needle))
        })
        .count()
}

#[test]
fn a_hung_sendmail_is_killed_and_the_message_stays_spooled() {
    let marker = 86_401;
    let site = sendmail_site(marker);
    let (id, answer) = site.challenge("192.0.2.10");
    let a = site.contact_post(&id, &answer).run();
    assert_eq!(a.status, 202, "received and queued: {}", a.text());
    assert!(
        a.elapsed >= Duration::from_secs(1) && a.elapsed < Duration::from_secs(10),
        "answered after the 1 s sendmail timeout, not hanging: {:?}",
        a.elapsed
    );
    assert!(
        a.stderr.contains("killed"),
        "the log says why: {}",
        a.stderr
    );
    assert_eq!(site.ls("spool/new").len(), 1, "the message stays spooled");
    assert!(
        wait_until(Duration::from_secs(5), || sleepers(marker) == 0),
        "the hung program and its child were killed"
    );
}

#[test]
fn a_hung_sendmail_does_not_stop_a_fastcgi_responder() {
    let marker = 86_402;
    let site = sendmail_site(marker);
    let contact = Spawn::unix("contact", site.root()).start();
    let posts: Vec<_> = (0..4)
        .map(|i| {
            let addr = format!("192.0.2.{}", 20 + i);
            let (id, answer) = site.challenge(&addr);
            let req = site.contact_post(&id, &answer).remote_addr(&addr);
            let ep = contact.endpoint.clone();
            thread::spawn(move || req.run_on(&ep))
        })
        .collect();
    thread::sleep(Duration::from_millis(200));
    // While four requests wait on the hung program, the responder serves others.
    let form = site.cgi("contact", "GET").run_on(&contact.endpoint);
    assert_eq!(form.status, 200, "{}", form.text());
    let posts: Vec<Answer> = posts.into_iter().map(|t| t.join().expect("join")).collect();
    for p in &posts {
        assert_eq!(p.status, 202, "{}", p.text());
        assert!(
            form.elapsed < p.elapsed,
            "the form was answered while the posts waited ({:?} vs {:?})",
            form.elapsed,
            p.elapsed
        );
        assert!(p.elapsed < Duration::from_secs(10), "{:?}", p.elapsed);
    }
    assert_eq!(site.ls("spool/new").len(), 4);
    assert!(
        wait_until(Duration::from_secs(5), || sleepers(marker) == 0),
        "no program left behind"
    );
    let mut contact = contact;
    assert!(contact.alive());
    assert_eq!(
        site.cgi("contact", "GET").run_on(&contact.endpoint).status,
        200
    );
}

/// A FIFO where the page template belongs: opening it blocks until a writer comes, which
/// never happens. Returns the template's path.
fn stuck_template(site: &Site) -> std::path::PathBuf {
    let dir = site.var("config/templates");
    std::fs::create_dir_all(&dir).expect("templates folder");
    let path = dir.join("page.html");
    let made = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo");
    path
}

fn short_deadline_site() -> Site {
    Site::with("request_timeout_seconds = 2", "")
}

#[test]
fn a_cgi_request_stuck_without_a_timeout_is_answered_by_its_watchdog() {
    let site = short_deadline_site();
    let (id, answer) = site.challenge("192.0.2.10");
    stuck_template(&site);

    // Stuck before anything was saved: "NOT received", retry later.
    let a = site.cgi("contact", "GET").run();
    assert_eq!(a.status, 503, "{}", a.text());
    assert_eq!(a.header("retry-after"), Some("60"));
    assert!(a.text().contains("NOT received"), "{}", a.text());
    assert!(
        a.elapsed >= Duration::from_secs(2) && a.elapsed < Duration::from_secs(15),
        "answered at the deadline, not hanging: {:?}",
        a.elapsed
    );
    assert!(a.stderr.contains("overran its deadline"), "{}", a.stderr);

    // Stuck after the message was saved (the success page reads the template): the
    // watchdog says it was received, and it is there.
    let a = site.contact_post(&id, &answer).run();
    assert_eq!(a.status, 202, "{}", a.text());
    assert!(a.text().contains("received and saved"), "{}", a.text());
    assert_eq!(
        site.ls("spool/new").len() + site.ls("mail-out").len(),
        1,
        "the message is kept"
    );
}

#[test]
fn stuck_fastcgi_requests_are_answered_and_free_their_places() {
    let site = short_deadline_site();
    let template = stuck_template(&site);
    let contact = Spawn::unix("contact", site.root()).start();
    // More stuck requests than the responder has places (32).
    let stuck: Vec<_> = (0..34)
        .map(|_| {
            let req = site.cgi("contact", "GET");
            let ep = contact.endpoint.clone();
            thread::spawn(move || req.run_on(&ep))
        })
        .collect();
    for t in stuck {
        let a = t.join().expect("join");
        assert_eq!(a.status, 503, "{}", a.text());
        assert!(a.text().contains("took too long"), "{}", a.text());
        assert!(a.elapsed < Duration::from_secs(20), "{:?}", a.elapsed);
    }
    // The threads stay stuck in their open(2), but their places are free: with a real
    // template in place the responder serves again.
    std::fs::remove_file(&template).expect("remove the FIFO");
    std::fs::write(&template, "<main>{{main}}</main>").expect("template");
    let a = site.cgi("contact", "GET").run_on(&contact.endpoint);
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(a.text().starts_with("<main>"), "{}", a.text());
    let mut contact = contact;
    assert!(contact.alive());
    assert!(contact.log().contains("overran its deadline"));
}
