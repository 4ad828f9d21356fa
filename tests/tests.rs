//! formwarden's end-to-end suite: every test runs the real executables as separate
//! processes (often dozens at once) over a throw-away runtime tree. Build with
//! `--features test-hooks,redis` (scripts/test.sh does): the test hooks let tests learn
//! CAPTCHA answers, and the Redis store is what tests/shared_store.rs runs two nodes on.

mod util;

mod alternatives;
mod bad_input;
mod bots;
mod browser;
mod captcha;
mod check;
mod contention;
mod corrupt_state;
mod crashes;
mod deadlines;
mod disclosure;
mod fastcgi;
mod filesystem_faults;
mod floods;
mod ftp_deploy;
mod io_faults;
mod locking;
mod mail;
mod privacy;
mod proxies;
mod release_archive;
mod release_profile;
mod shared_store;
mod spam;
mod spool_admin;
mod tokens;
mod webservers;
