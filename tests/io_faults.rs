//! The I/O-error sweep (issue 9, item 2): for every write path, a test build fails I/O
//! step N of the real process — once, and from N on — for every N until the process
//! completes without reaching the fault. The library's filesystem seam (`fsio`) numbers
//! the steps. After each run the process answered under control (an exit code, no panic,
//! no hang; a CGI a status with a header block, a contact POST never a 2xx for a message
//! that was not stored and "NOT received" when it refuses), every state file parses
//! (old or new, never torn), no temp file is left behind, and the next requests work with
//! every accepted message delivered (`util::faults` holds the scenarios).

use crate::util::faults::*;

/// Runs `scenario` with fault `make(n)` for n = 1, 2, … until a run no longer reaches its
/// fault; returns how many steps the path has (its fault points).
fn sweep(scenario: &Scenario, make: fn(u32) -> Fault) -> u32 {
    // A bound against a path that never ends; the longest real one, the full sweep that
    // visits every shard, has about 1,600 steps.
    const MAX_STEPS: u32 = 5000;
    for n in 1..=MAX_STEPS {
        let fault = make(n);
        let ctx = (scenario.prepare)();
        let root = ctx.root();
        // A scenario may start with temp files of its own (the sweep's crash leftovers).
        let temps_before = validate_tree(&root);
        let ran = (scenario.act)(&ctx, Some(fault));
        let fired = fault.fired(&ran.stderr);
        let what = format!("{} under {fault:?}", scenario.name);
        checked(&what, &ran, || {
            (scenario.judge)(&ctx, &ran, Some(fault));
            let new_temps: Vec<_> = validate_tree(&root)
                .into_iter()
                .filter(|t| !temps_before.contains(t))
                .collect();
            assert!(
                new_temps.is_empty(),
                "no temp file left behind: {new_temps:?}"
            );
            (scenario.after)(&ctx, &ran);
        });
        if !fired {
            assert!(n > 1, "{what}: the path does I/O at all");
            return n - 1;
        }
    }
    panic!("{}: more than {MAX_STEPS} steps", scenario.name);
}

/// Sweeps scenario `index` in both modes and prints its fault points (the figures in
/// docs/RELIABILITY.md come from these lines).
fn sweep_both(index: usize) {
    let scenario = &scenarios()[index];
    let once = sweep(scenario, Fault::Once);
    let from = sweep(scenario, Fault::From);
    // The two counts can differ by a few steps where the prepared state is not the same
    // every time (the full sweep: challenge ids fall into random shards, and whether the
    // preparing requests ran a sweep step of their own depends on the second they ran in).
    println!(
        "io-fault sweep: {}: {once} fault points failed once, {from} failed from there on",
        scenario.name
    );
}

/// A full disk and a permission taken away, from each step of a contact POST on: the
/// visitor is told the message was NOT received unless it was stored.
#[test]
fn a_disk_that_fills_or_a_permission_that_goes_at_any_step_of_a_contact_post_loses_nothing() {
    let scenario = &scenarios()[1];
    let full = sweep(scenario, |n| Fault::FromWith(n, "ENOSPC"));
    let denied = sweep(scenario, |n| Fault::FromWith(n, "EACCES"));
    println!(
        "io-fault sweep: {}: {full} fault points with ENOSPC, {denied} with EACCES",
        scenario.name
    );
}

#[test]
fn every_io_step_of_a_captcha_get_fails_cleanly() {
    sweep_both(0);
}

#[test]
fn every_io_step_of_a_contact_post_fails_cleanly_and_loses_no_message() {
    sweep_both(1);
}

#[test]
fn every_io_step_of_a_token_rotation_on_the_command_line_fails_cleanly() {
    sweep_both(2);
}

#[test]
fn every_io_step_of_a_token_rotation_over_http_fails_cleanly() {
    sweep_both(3);
}

#[test]
fn every_io_step_of_a_token_revocation_fails_cleanly() {
    sweep_both(4);
}

#[test]
fn every_io_step_of_a_spool_retry_fails_cleanly_and_loses_no_message() {
    sweep_both(5);
}

#[test]
fn every_io_step_of_a_requeue_fails_cleanly_and_loses_no_message() {
    sweep_both(6);
}

#[test]
fn every_io_step_of_a_full_sweep_fails_cleanly() {
    sweep_both(7);
}

#[test]
fn every_io_step_of_the_first_start_fails_cleanly() {
    sweep_both(8);
}
