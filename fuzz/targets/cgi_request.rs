//! AFL++ entry for the `cgi_request` target; the checks live in formwarden_fuzz::cgi_request.
fn main() {
    afl::fuzz!(|data: &[u8]| formwarden_fuzz::cgi_request(data));
}
