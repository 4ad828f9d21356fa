//! AFL++ entry for the `form` target; the checks live in formwarden_fuzz::form.
fn main() {
    afl::fuzz!(|data: &[u8]| formwarden_fuzz::form(data));
}
