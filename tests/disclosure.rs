//! Issue 7, item 2: a visitor's page or JSON never contains a file path, an operating-system
//! error text or a config value, whatever failed (I/O, config, lock, mail); the operator's
//! log has the detail once, under a short reference that the page shows too. The wording
//! fits the endpoint: an image request is never told about a message. (The render class,
//! which no request can provoke, is covered by the library's unit test over every error.)

use crate::util::{Answer, Site};

/// Checks that `a` shows nothing of the server's inside and returns its reference.
fn assert_discloses_nothing(a: &Answer, site: &Site) -> String {
    let body = a.text();
    let root = site.root().display().to_string();
    for secret in [
        root.as_str(),
        "/var/",
        "var/tmp",
        ".tmp-",
        "os error",
        "No space",
        "Not a directory",
        "Permission denied",
        "config.toml",
    ] {
        assert!(
            !body.contains(secret),
            "the answer shows {secret:?}: {body}"
        );
    }
    let marker = "Reference for the site owner: ";
    let at = body
        .find(marker)
        .unwrap_or_else(|| panic!("no reference in the answer: {body}"));
    let reference: String = body[at + marker.len()..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    assert!(reference.len() >= 8, "a usable reference: {body}");
    let logged: Vec<&str> = a
        .stderr
        .lines()
        .filter(|l| l.contains(&reference))
        .collect();
    assert_eq!(
        logged.len(),
        1,
        "the log has the detail once, under the reference: {}",
        a.stderr
    );
    reference
}

fn assert_not_about_a_message(a: &Answer) {
    let t = a.text().to_lowercase();
    assert!(
        !t.contains("your message") && !t.contains("received"),
        "an image request is not told about a message: {}",
        a.text()
    );
}

#[test]
fn a_full_disk_shows_no_path_to_the_image_or_the_message_request() {
    let site = Site::new();
    let _fs = site.on_small_disk();
    let (id, answer) = site.challenge("192.0.2.10");
    site.fill_disk();
    for json in [false, true] {
        let mut image = site.cgi("captcha", "GET").remote_addr("192.0.2.77");
        if json {
            image = image.header("accept", "application/json");
        }
        let a = image.run();
        assert_eq!(a.status, 503, "{}", a.text());
        assert!(a.stderr.contains("No space left"), "{}", a.stderr);
        assert_discloses_nothing(&a, &site);
        assert_not_about_a_message(&a);

        let mut post = site.contact_post(&id, &answer);
        if json {
            post = post.header("accept", "application/json");
        }
        let a = post.run();
        assert_eq!(a.status, 503, "{}", a.text());
        assert!(a.text().contains("NOT received"), "{}", a.text());
        assert_discloses_nothing(&a, &site);
    }
}

#[test]
fn a_broken_folder_shows_no_path() {
    let site = Site::new();
    // A file where a state folder belongs: every write under it fails with ENOTDIR, a
    // broken installation (500), not a temporary fault.
    let dir = site.var("tmp/ratelimit");
    std::fs::remove_dir_all(&dir).expect("remove folder");
    std::fs::write(&dir, b"not a folder").expect("file in its place");
    let a = site.cgi("captcha", "GET").run();
    assert_eq!(a.status, 500, "{}", a.text());
    assert_discloses_nothing(&a, &site);
    assert_not_about_a_message(&a);
    let a = site
        .cgi("captcha", "GET")
        .header("accept", "application/json")
        .run();
    assert_eq!(a.status, 500, "{}", a.text());
    assert_discloses_nothing(&a, &site);
}

#[test]
fn a_broken_config_shows_neither_its_path_nor_its_values() {
    let site = Site::new();
    let path = site.var("config/config.toml");
    let mut config = std::fs::read_to_string(&path).expect("config");
    config = config.replace(
        "[mail]",
        "[mail]\nsubject_prefix = \"hunter2-secret-value\"\nunknown_key_xyz = 1",
    );
    std::fs::write(&path, config).expect("config");
    for (bin, method) in [("captcha", "GET"), ("contact", "GET"), ("contact", "POST")] {
        let a = site
            .cgi(bin, method)
            .form(&[("name", "A".to_string())])
            .run();
        assert_eq!(a.status, 500, "{bin} {method}: {}", a.text());
        assert!(
            a.stderr.contains("unknown_key_xyz"),
            "the log names the key: {}",
            a.stderr
        );
        for secret in ["hunter2", "unknown_key_xyz", "subject_prefix"] {
            assert!(!a.text().contains(secret), "{bin}: {}", a.text());
        }
        assert_discloses_nothing(&a, &site);
    }
    let a = site.cgi("tokens", "GET").query("profile=deploy").run();
    assert_eq!(a.status, 500, "{}", a.text());
    assert!(!a.text().contains(&site.root().display().to_string()));
    assert!(!a.text().contains("unknown_key_xyz"), "{}", a.text());
}

#[test]
fn a_missing_config_shows_no_path() {
    let site = Site::new();
    std::fs::remove_file(site.var("config/config.toml")).expect("remove config");
    let a = site.cgi("contact", "GET").run();
    assert_eq!(a.status, 500, "{}", a.text());
    assert!(a.stderr.contains("config.toml"), "{}", a.stderr);
    assert_discloses_nothing(&a, &site);
}

#[test]
fn a_failing_mail_transport_shows_no_path_or_server_error() {
    let site = Site::with_mail(
        "",
        "[mail]\nfrom = \"form@example.org\"\nto = [\"owner@example.org\"]\n\
         transport = \"sendmail\"\n[mail.sendmail]\ncommand = \"/nonexistent/secret-bin/sendmail\"\n",
    );
    let (id, answer) = site.challenge("192.0.2.10");
    let a = site.contact_post(&id, &answer).run();
    assert_eq!(a.status, 202, "kept in the spool: {}", a.text());
    assert!(
        a.stderr.contains("secret-bin"),
        "the log says why: {}",
        a.stderr
    );
    assert!(!a.text().contains("secret-bin"), "{}", a.text());
    assert!(!a.text().contains("os error"), "{}", a.text());
    assert!(!a.text().contains(&site.root().display().to_string()));
}
