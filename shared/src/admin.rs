//! The command line for operators (cron, SSH): token rotation, revocation, listing and
//! verification, and a manual sweep. Output goes to stdout, problems to stderr; exit codes
//! are 0 (ok), 1 (a verify that failed) and 2 (usage or runtime error). It never touches
//! state itself: every change goes through the services, under their locks.

use crate::app::App;
use crate::state::now;
use std::io::{BufRead, Write};

/// Opens the runtime tree, runs `command` and turns its outcome into an exit code: `None`
/// means the arguments did not fit (usage, 2), an error is printed once with the program's
/// name (2). Both command lines share this, so they report problems the same way.
fn run_cli(
    program: &str,
    usage: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
    command: impl FnOnce(&App, u64, &mut dyn Write, &mut dyn Write) -> Option<crate::Result<i32>>,
) -> i32 {
    // The self-check runs even when the config is broken: saying why is its job.
    if std::env::args().nth(1).as_deref() == Some("--check") {
        return crate::check::print(&crate::check::run(None), out);
    }
    let app = match App::discover() {
        Ok(a) => a,
        Err(e) => {
            let _ = writeln!(err, "{program}: {e}");
            return 2;
        }
    };
    match command(&app, now(), out, err) {
        None => {
            let _ = writeln!(err, "{usage}");
            2
        }
        Some(Ok(code)) => code,
        Some(Err(e)) => {
            let _ = writeln!(err, "{program}: {e}");
            2
        }
    }
}

const TOKENS_USAGE: &str = "usage: tokens rotate PROFILE | revoke PROFILE ID|all | list PROFILE | verify PROFILE [TOKEN] | sweep
  The runtime root comes from FORMWARDEN_ROOT or is found next to the executable.
  verify reads the token from stdin when it is not given (keeps it out of `ps`).";

/// Runs the `tokens` command line; returns the exit code.
pub fn tokens_cli(args: &[String], out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let arg = |i: usize| args.get(i).map(String::as_str);
    run_cli("tokens", TOKENS_USAGE, out, err, |app, t, out, _err| {
        Some(match (arg(0), arg(1), arg(2)) {
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
            (Some("sweep"), None, None) => crate::sweep::run(app, t).map(|s| {
                let _ = writeln!(out, "{s:?}");
                0
            }),
            _ => return None,
        })
    })
}

const SPOOL_USAGE: &str = "usage: spool retry | list [new|failed|sent|quarantine] | show ID | requeue ID|all | release ID | delete ID
  retry    deliver every due message in var/spool/new (run it from cron, e.g. every 5 minutes);
           prints a summary only when it delivered, deferred or gave up a message
           (--verbose: always); exit 1 when messages were deferred or given up
  list     messages in a folder with attempts and last error (default: new)
  show     one message as stored
  requeue  move a failed message (or all) back to new/ with fresh attempt counters
  release  send a quarantined message (suspected spam) after all
  delete   remove a quarantined message for good";

/// Runs the `spool` command line; returns the exit code (1 when a retry left messages
/// undelivered, so cron can mail the operator).
pub fn spool_cli(args: &[String], out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    use crate::spool::Folder;
    let arg = |i: usize| args.get(i).map(String::as_str);
    let folder = |name: Option<&str>| match name.unwrap_or("new") {
        "--quarantine" => Some(Folder::Quarantine),
        other => Folder::from_name(other),
    };
    run_cli("spool", SPOOL_USAGE, out, err, |app, t, out, err| {
        Some(match (arg(0), arg(1)) {
            (Some("retry"), verbose @ (None | Some("--verbose"))) => {
                spool_retry(app, t, verbose.is_some(), out)
            }
            (Some("list"), f) => spool_list(app, folder(f)?, t, usize::MAX, out),
            (Some("show"), Some(id)) if crate::spool::is_valid_id(id) => {
                app.spool.find_text(id).map(|found| match found {
                    Some(text) => {
                        let _ = write!(out, "{text}");
                        0
                    }
                    None => {
                        let _ = writeln!(err, "spool: no message {id}");
                        1
                    }
                })
            }
            (Some(verb @ ("release" | "delete")), Some(id)) => {
                spool_release(app, verb == "release", id, t, out, err)
            }
            (Some("requeue"), Some(id)) => {
                crate::delivery::requeue(&app.delivery(), id, t, usize::MAX).map(|r| {
                    let _ = writeln!(out, "{}", requeue_summary(&r));
                    let all_done = r.moved > 0 && r.busy == 0 && r.unreadable.is_empty();
                    if all_done { 0 } else { 1 }
                })
            }
            _ => return None,
        })
    })
}

/// The line `spool requeue` prints, and the endpoint's `do=requeue` answers: what moved,
/// and by id what did not, so that an operator without the log knows what to look at.
pub fn requeue_summary(r: &crate::delivery::Requeued) -> String {
    let mut line = format!("requeued {} message(s)", r.moved);
    if r.busy > 0 {
        line += &format!("; {} busy (run it again)", r.busy);
    }
    if !r.unreadable.is_empty() {
        line += &format!(
            "; cannot be read (the log says why): {}",
            r.unreadable.join(" ")
        );
    }
    if r.left > 0 {
        line += &format!("; {} more left (run it again)", r.left);
    }
    line
}

/// `spool retry [--verbose]`: one retry run; exit 1 when something stays undelivered.
fn spool_retry(app: &App, t: u64, verbose: bool, out: &mut dyn Write) -> crate::Result<i32> {
    crate::delivery::retry(&app.delivery(), t).map(|r| {
        // Quiet unless something happened: cron mails whatever is printed, and a line
        // every five minutes saying "nothing to do" buries the one that matters.
        if verbose || r.delivered + r.deferred + r.failed + r.errors > 0 {
            let _ = writeln!(
                out,
                "delivered {} deferred {} failed {} busy {} waiting {} errors {}",
                r.delivered, r.deferred, r.failed, r.busy, r.waiting, r.errors
            );
        }
        if r.deferred + r.failed + r.errors > 0 {
            1
        } else {
            0
        }
    })
}

/// `spool list [FOLDER]`: one line per message, oldest first, tab-separated, headed by its
/// columns; at most `max` messages, then a line saying how many more there are. An entry
/// that cannot be read is listed as such (and logged), never the end of the listing. The
/// tokens endpoint's `?action=spool&do=list` prints the same.
pub fn spool_list(
    app: &App,
    f: crate::spool::Folder,
    t: u64,
    max: usize,
    out: &mut dyn Write,
) -> crate::Result<i32> {
    let quarantine = f == crate::spool::Folder::Quarantine;
    let _ = if quarantine {
        writeln!(out, "id\treceived_at\treasons\tsubject")
    } else {
        writeln!(out, "id\tattempts\tnext_attempt_at\tlast_error")
    };
    let ids = app.spool.ids(f)?;
    for id in ids.iter().take(max) {
        let _ = match app.spool.load(f, id, t) {
            Ok(Some(Ok(m))) if quarantine => writeln!(
                out,
                "{}\t{}\t{}\t{}",
                m.id,
                m.received_at,
                m.quarantined_for.join(","),
                m.subject
            ),
            Ok(Some(Ok(m))) => writeln!(
                out,
                "{}\t{}\t{}\t{}",
                m.id, m.attempts, m.next_attempt_at, m.last_error
            ),
            Ok(Some(Err(reason))) => writeln!(out, "{id}\t?\t?\tunreadable: {reason}"),
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::error!(id, error = %e, "spool entry unreadable");
                writeln!(out, "{id}\t?\t?\tunreadable (the log says why)")
            }
        };
    }
    if ids.len() > max {
        let _ = writeln!(out, "... {} more not listed", ids.len() - max);
    }
    Ok(0)
}

/// `spool release ID` / `spool delete ID`: a quarantined message sent on, or deleted.
fn spool_release(
    app: &App,
    release: bool,
    id: &str,
    t: u64,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> crate::Result<i32> {
    use crate::delivery::Released;
    let done = if release {
        crate::delivery::release(&app.delivery(), id, t)
    } else {
        crate::delivery::delete_quarantined(&app.delivery(), id, t)
    };
    done.map(|r| {
        let (line, code) = match r {
            Released::Delivered => (format!("released {id}: delivered"), 0),
            Released::Queued => (
                format!("released {id}: in var/spool/new, the next retry sends it"),
                0,
            ),
            Released::Deleted => (format!("deleted {id}"), 0),
            Released::NotFound => (format!("no quarantined message {id}"), 1),
            Released::Busy => (format!("{id} is busy; try again"), 1),
        };
        let _ = if code == 0 {
            writeln!(out, "{line}")
        } else {
            writeln!(err, "spool: {line}")
        };
        code
    })
}
