//! Trusted proxies: `X-Forwarded-For` only counts when the direct peer is a configured
//! proxy, and then the right-most untrusted hop is the client. Spoofed headers from anyone
//! else change nothing.

use crate::util::*;

fn window_exists(site: &Site, addr: &str) -> bool {
    site.window_path(addr).exists()
}

fn get(site: &Site, peer: &str, xff: &str) -> u16 {
    site.cgi("captcha", "GET")
        .remote_addr(peer)
        .header("x-forwarded-for", xff)
        .run()
        .status
}

#[test]
fn a_spoofed_forwarded_for_from_an_untrusted_peer_does_not_change_the_key() {
    let site = Site::with(
        "captcha_max_get = 1\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]",
        "",
    );
    assert_eq!(get(&site, "198.51.100.5", "1.1.1.1"), 200);
    // A new spoofed address each time does not buy a new budget.
    assert_eq!(get(&site, "198.51.100.5", "2.2.2.2"), 429);
    assert!(window_exists(&site, "198.51.100.5"));
    assert!(!window_exists(&site, "1.1.1.1") && !window_exists(&site, "2.2.2.2"));
}

#[test]
fn a_trusted_proxy_passes_the_rightmost_untrusted_hop() {
    let site = Site::with(
        "captcha_max_get = 1\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]",
        "",
    );
    assert_eq!(get(&site, "127.0.0.1", "203.0.113.1"), 200);
    assert!(window_exists(&site, "203.0.113.1"));
    // Another client behind the same proxy has its own budget.
    assert_eq!(get(&site, "127.0.0.1", "203.0.113.2"), 200);
    // A client that prepends a fake hop is still itself: the right-most untrusted hop.
    assert_eq!(get(&site, "127.0.0.1", "6.6.6.6, 203.0.113.1"), 429);
    // Trusted hops in the chain are passed over.
    assert_eq!(get(&site, "127.0.0.1", "203.0.113.2, 10.1.2.3"), 429);
    assert!(
        !window_exists(&site, "127.0.0.1"),
        "the proxy itself is not the client"
    );
    assert!(!window_exists(&site, "6.6.6.6"));
}
