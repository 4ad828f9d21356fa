//! AFL++ entry for the `preview_head` target; the checks live in formwarden_fuzz::preview_head.
fn main() {
    afl::fuzz!(|data: &[u8]| formwarden_fuzz::preview_head(data));
}
