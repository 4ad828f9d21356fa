//! AFL++ entry for the `fastcgi` target; the checks live in formwarden_fuzz::fastcgi.
fn main() {
    afl::fuzz!(|data: &[u8]| formwarden_fuzz::fastcgi(data));
}
