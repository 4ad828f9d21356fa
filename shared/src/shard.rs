//! Sharded folders. State that grows with the number of clients (rate-limit windows,
//! CAPTCHA challenges) and the lock files of every key live in 256 sub-folders named by
//! two hex digits of a hash of the file's name (`var/tmp/ratelimit/3f/{key}.toml`,
//! `var/lock/a0/{key}.lock`). Housekeeping then visits one sub-folder per step, so a
//! visitor's request does a bounded amount of it whatever is stored, and a ceiling can be
//! checked on one sub-folder when an entry is created.
//!
//! This module only names paths; it never creates, reads or removes anything. Sub-folders
//! are created on first use by `atomic` and `lock`, and never removed while the runtime
//! tree is in use (removing one could race a creation inside it).

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Number of sub-folders per sharded folder.
pub const COUNT: usize = 256;

/// The sub-folder name (`00` … `ff`) of the file whose name (without extension) is `stem`.
pub fn of(stem: &str) -> String {
    name(usize::from(Sha256::digest(stem.as_bytes())[0]))
}

/// The name of sub-folder `i` (taken modulo [`COUNT`]).
pub fn name(i: usize) -> String {
    format!("{:02x}", i % COUNT)
}

/// `dir/{shard of stem}/{stem}{ext}`.
pub fn path(dir: &Path, stem: &str, ext: &str) -> PathBuf {
    dir.join(of(stem)).join(format!("{stem}{ext}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_spread_over_every_shard_and_stay_inside_the_folder() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..20_000 {
            seen.insert(of(&format!("key{i}")));
        }
        assert_eq!(seen.len(), COUNT);
        assert_eq!(name(255), "ff");
        assert_eq!(name(256), "00");
        let p = path(Path::new("/v/lock"), "token_x", ".lock");
        assert_eq!(
            p.parent().and_then(Path::parent),
            Some(Path::new("/v/lock"))
        );
    }
}
