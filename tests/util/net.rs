//! Loopback ports for the servers the tests start: a free one to bind, whether one accepts
//! connections, and the wait until one does.

use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// A free loopback port (bound and released; the server binds it right after, and a
/// server that finds it taken in between is started again on a fresh one where that can
/// happen often enough to matter).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// True when something accepts connections on loopback port `port`.
pub fn accepts(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Waits up to `limit` until loopback port `port` accepts connections; false when it
/// never did.
pub fn wait_for_port(port: u16, limit: Duration) -> bool {
    super::wait_until(limit, || accepts(port))
}
