//! `tokens`: token rotation. Under a web server (CGI, or FastCGI when started with a
//! listening socket on fd 0) it is the verify/rotate endpoint; from a shell or cron it is
//! the operator's command line.
fn main() {
    let web =
        std::env::var_os("GATEWAY_INTERFACE").is_some() || formwarden::fastcgi::stdin_is_listener();
    if web {
        std::process::exit(formwarden::run::cgi_main(
            "tokens",
            formwarden::endpoint::tokens,
        ));
    }
    formwarden::run::init_logging("tokens");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = formwarden::admin::tokens_cli(&args, &mut std::io::stdout(), &mut std::io::stderr());
    std::process::exit(code);
}
