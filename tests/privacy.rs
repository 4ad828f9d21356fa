//! Privacy: after real traffic, no raw client address appears anywhere under `var/` or in
//! what the executables logged.

use crate::util::*;

#[test]
fn no_raw_address_reaches_disk_or_log() {
    let site = Site::with("contact_max_post = 2", "");
    let addrs = ["198.51.100.201", "2001:db8:abcd:12::77", "203.0.113.199"];
    let mut logs = String::new();
    for addr in addrs {
        for _ in 0..3 {
            let c = site
                .cgi("captcha", "GET")
                .remote_addr(addr)
                .header("x-forwarded-for", "192.0.2.222")
                .run();
            logs.push_str(&c.stderr);
            let id = c.cookie("fw_captcha").expect("id");
            let answer = c
                .header("x-formwarden-test-answer")
                .expect("hook")
                .to_string();
            let p = site
                .cgi("contact", "POST")
                .remote_addr(addr)
                .captcha_cookie(&id)
                .form(&good_form(&answer))
                .var("FORMWARDEN_LOG", "trace")
                .run();
            logs.push_str(&p.stderr);
            let wrong = site
                .cgi("contact", "POST")
                .remote_addr(addr)
                .captcha_cookie(&id)
                .form(&good_form("XXXXX"))
                .var("FORMWARDEN_LOG", "trace")
                .run();
            logs.push_str(&wrong.stderr);
        }
    }
    assert!(
        !logs.is_empty(),
        "the executables logged something to check"
    );
    let mut needles: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    needles.extend(["2001:db8:abcd:12".to_string(), "192.0.2.222".to_string()]);
    for file in walk(&site.root().join("var")) {
        let text = String::from_utf8_lossy(&std::fs::read(&file).expect("read")).to_string();
        for n in &needles {
            assert!(
                !text.contains(n.as_str()),
                "{} contains {n}",
                file.display()
            );
        }
    }
    for n in &needles {
        assert!(!logs.contains(n.as_str()), "the log contains {n}");
    }
}
