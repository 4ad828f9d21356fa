//! Faults of the file system under `var/`: a file where a state folder should be (for
//! every state folder the layout names), and `var/` remounted read-only. In each case a
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
    assert!(
        !a.text().contains(&site.root().display().to_string()),
        "{what}: no server path shown: {}",
        a.text()
    );
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
