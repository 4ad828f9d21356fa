//! The command line for operators (cron, SSH): token rotation, revocation, listing and
//! verification, and a manual sweep. Output goes to stdout, problems to stderr; exit codes
//! are 0 (ok), 1 (a verify that failed) and 2 (usage or runtime error).

use crate::app::App;
use crate::cgi::Request;
use crate::state::now;
use std::io::{BufRead, Write};

const TOKENS_USAGE: &str = "usage: tokens rotate PROFILE | revoke PROFILE ID|all | list PROFILE | verify PROFILE [TOKEN] | sweep
  The runtime root comes from FORMWARDEN_ROOT or is found next to the executable.
  verify reads the token from stdin when it is not given (keeps it out of `ps`).";

/// Runs the `tokens` command line; returns the exit code.
pub fn tokens_cli(args: &[String], out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let app = match App::for_request(&Request::from_process_env()) {
        Ok(a) => a,
        Err(e) => {
            let _ = writeln!(err, "tokens: {e}");
            return 2;
        }
    };
    let t = now();
    let arg = |i: usize| args.get(i).map(String::as_str);
    let result = match (arg(0), arg(1), arg(2)) {
        (Some("rotate"), Some(p), None) => app.tokens.rotate(p, t).map(|i| {
            let exp = if i.expires_at == 0 {
                "never (until rotated away)".to_string()
            } else {
                i.expires_at.to_string()
            };
            let _ = writeln!(
                out,
                "{}\n# id {} rotation {} expires {} — shown once, store it now",
                i.secret, i.id, i.rotation, exp
            );
            0
        }),
        (Some("revoke"), Some(p), Some(id)) => app.tokens.revoke(p, id, t).map(|n| {
            let _ = writeln!(out, "revoked {n} token(s)");
            if n == 0 { 1 } else { 0 }
        }),
        (Some("list"), Some(p), None) => app.tokens.list(p, t).map(|list| {
            let _ = writeln!(out, "id\tcreated_at\texpires_at\tcurrent");
            for i in list {
                let _ = writeln!(
                    out,
                    "{}\t{}\t{}\t{}",
                    i.id, i.created_at, i.expires_at, i.current
                );
            }
            0
        }),
        (Some("verify"), Some(p), tok) => {
            let token = match tok {
                Some(t) => t.to_string(),
                None => {
                    let mut line = String::new();
                    let _ = std::io::stdin().lock().read_line(&mut line);
                    line.trim().to_string()
                }
            };
            app.tokens.verify(p, &token, t).map(|ok| {
                let _ = writeln!(out, "{}", if ok { "valid" } else { "invalid" });
                if ok { 0 } else { 1 }
            })
        }
        (Some("sweep"), None, None) => crate::sweep::run(&app, t).map(|s| {
            let _ = writeln!(out, "{s:?}");
            0
        }),
        _ => {
            let _ = writeln!(err, "{TOKENS_USAGE}");
            return 2;
        }
    };
    result.unwrap_or_else(|e| {
        let _ = writeln!(err, "tokens: {e}");
        2
    })
}
