//! AFL++ entry for the `config` target; the checks live in formwarden_fuzz::config.
fn main() {
    afl::fuzz!(|data: &[u8]| formwarden_fuzz::config(data));
}
