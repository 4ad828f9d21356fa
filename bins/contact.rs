//! `contact`: the contact form executable (GET shows the form, POST takes a message). All
//! logic is in `formwarden::endpoint::contact`.
fn main() {
    std::process::exit(formwarden::run::cgi_main(
        "contact",
        formwarden::endpoint::contact,
    ));
}
