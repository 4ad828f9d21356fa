//! AFL++ entry for the `state` target; the checks live in formwarden_fuzz::state.
fn main() {
    afl::fuzz!(|data: &[u8]| formwarden_fuzz::state(data));
}
