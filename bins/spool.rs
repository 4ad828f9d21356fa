//! `spool`: the operator's mail queue command (cron runs `spool retry`). All logic is in
//! `formwarden::admin::spool_cli` and `formwarden::delivery`.
fn main() {
    formwarden::run::init_logging("spool");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = formwarden::admin::spool_cli(&args, &mut std::io::stdout(), &mut std::io::stderr());
    std::process::exit(code);
}
