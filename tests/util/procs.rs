//! The tests' view of processes: signals through `kill(2)` (to one process or to a whole
//! process group), the effective uid, and what `/proc` says about a pid. Every read of
//! `/proc/PID/stat` goes through [`stat`], because the command-name field in it may hold
//! spaces and parentheses and is easy to parse wrong.

use std::path::Path;

/// Sends `sig` to process `pid`, or to process group `-pid` when `pid` is negative; false
/// when there was nothing to signal (or no right to).
pub fn signal(pid: i32, sig: i32) -> bool {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// SIGKILL to process `pid`, or to process group `-pid` when `pid` is negative.
pub fn kill_hard(pid: i32) -> bool {
    signal(pid, libc::SIGKILL)
}

/// The effective uid of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// The fields of `/proc/PID/stat` the tests use.
struct Stat {
    /// The state letter: `R`, `S`, `D`, `Z` (zombie) and so on.
    state: char,
    /// The process group.
    pgrp: u32,
}

/// Parses `/proc/PID/stat`; `None` when the process is gone.
fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; the fields after its last ')'
    // are: state, ppid, pgrp.
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let _ppid = f.next()?;
    let pgrp = f.next()?.parse().ok()?;
    Some(Stat { state, pgrp })
}

/// True while process `pid` exists and has not exited (a zombie has).
pub fn running(pid: u32) -> bool {
    stat(pid).is_some_and(|s| s.state != 'Z')
}

/// Every pid that `/proc` lists right now, live or zombie.
pub fn all() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Live (not zombie) members of process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    all()
        .into_iter()
        .filter(|&pid| stat(pid).is_some_and(|s| s.pgrp == pgid && s.state != 'Z'))
        .collect()
}

/// The command line of `pid` with its arguments separated by NUL bytes, as the kernel
/// keeps it (so `"sleep\0{n}"` finds `sleep n` and not `sleep n0`).
pub fn cmdline(pid: u32) -> Option<String> {
    read(pid, "cmdline")
}

/// The executable's name of `pid` (at most 15 bytes, as the kernel keeps it).
pub fn comm(pid: u32) -> Option<String> {
    read(pid, "comm").map(|c| c.trim_end().to_string())
}

/// How many threads `pid` runs.
pub fn threads(pid: u32) -> Option<usize> {
    read(pid, "status")?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

fn read(pid: u32, file: &str) -> Option<String> {
    let bytes = std::fs::read(Path::new("/proc").join(pid.to_string()).join(file)).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}
