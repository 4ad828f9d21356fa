//! `captcha`: the CAPTCHA GET executable. Answers a PNG challenge (id in a cookie) or JSON
//! for scripts; all logic is in `formwarden::endpoint::captcha`.
fn main() {
    std::process::exit(formwarden::run::cgi_main(
        "captcha",
        formwarden::endpoint::captcha,
    ));
}
