//! Tests of the executables as the release profile builds them, the way they ship (the
//! rest of the suite runs the test profile's builds). Issue 7, item 4: the release profile
//! unwinds on panic, so a handler bug under FastCGI closes only its own connection, while
//! the requests in flight beside it are answered and the responder goes on serving.

use crate::fastcgi::client::FastCgi;
use crate::fastcgi::responder::Spawn;
use crate::util::*;
use formwarden::lock::LockKey;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

/// The release-profile build of executable `name` (with the test hooks, which only add
/// answers and a panic switch the suite needs), in a target folder of its own
/// (`target/hooks/`), so that it is never mistaken for a build to deploy.
/// scripts/test.sh builds it before the suite runs and names its folder in
/// `FORMWARDEN_RELEASE_BINS` (a cargo started from inside the test would rebuild it from
/// scratch, its environment differing from the outer one); when a developer runs
/// `cargo test` alone, the first call builds it here.
pub fn release_exe(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("FORMWARDEN_RELEASE_BINS") {
            return PathBuf::from(dir);
        }
        let target = Path::new(env!("CARGO_BIN_EXE_captcha"))
            .parent()
            .and_then(Path::parent)
            .expect("target folder")
            .join("hooks");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--locked", "--features", "test-hooks"])
            .arg("--bins")
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .status()
            .expect("run cargo");
        assert!(status.success(), "the release build failed");
        target.join("release")
    });
    dir.join(name)
}

#[test]
fn a_panic_in_a_release_built_responder_closes_only_its_connection() {
    let site = Site::new();
    let mut r = Spawn::unix("captcha", site.root())
        .exe(release_exe("captcha"))
        .start();
    let ep = r.endpoint.clone();

    // A request in flight: it waits on a lock that we release after the panic.
    let addr = "192.0.2.60";
    let held = site.hold_lock(&LockKey::ratelimit(&client_key(addr)));
    let waiting = site.cgi("captcha", "GET").remote_addr(addr);
    let ep2 = ep.clone();
    let in_flight = thread::spawn(move || waiting.run_on(&ep2));
    thread::sleep(Duration::from_millis(60));

    let bug = site
        .cgi("captcha", "GET")
        .header("x-formwarden-test-panic", "1");
    let mut conn = ep.connect().expect("connect");
    assert!(
        bug.send(&mut conn, 1, false).is_err(),
        "the panicking request's connection is closed without an answer"
    );
    drop(held);
    let a = in_flight.join().expect("join");
    assert_eq!(
        a.status,
        200,
        "the request in flight was answered: {}",
        a.text()
    );
    assert!(r.alive(), "the responder survived: {}", r.log());
    assert!(r.log().contains("panicked"), "{}", r.log());
    let next = site
        .cgi("captcha", "GET")
        .remote_addr("192.0.2.61")
        .run_on(&ep);
    assert_eq!(next.status, 200, "{}", next.text());
}
