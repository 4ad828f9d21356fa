//! The release archive for shared hosting, as the tests get it: scripts/test.sh runs
//! scripts/release.sh once before the suite and names the archive in
//! `FORMWARDEN_RELEASE_ARCHIVE`; a test run on its own builds it here. Its `.sha256` is
//! checked before anything uses it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The archive's path (checksum verified).
pub fn archive() -> &'static Path {
    static ARCHIVE: OnceLock<PathBuf> = OnceLock::new();
    ARCHIVE.get_or_init(|| {
        let archive = match std::env::var_os("FORMWARDEN_RELEASE_ARCHIVE") {
            Some(a) => PathBuf::from(a),
            None => {
                let root = Path::new(env!("CARGO_MANIFEST_DIR"));
                let out = Command::new("bash")
                    .arg(root.join("scripts/release.sh"))
                    .output()
                    .expect("run scripts/release.sh");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                root.join(
                    String::from_utf8_lossy(&out.stdout)
                        .trim()
                        .lines()
                        .last()
                        .unwrap_or(""),
                )
            }
        };
        let sum = format!("{}.sha256", archive.display());
        let check = Command::new("sha256sum")
            .arg("-c")
            .arg(Path::new(&sum).file_name().expect("name"))
            .current_dir(archive.parent().expect("dist"))
            .output()
            .expect("sha256sum");
        assert!(
            check.status.success(),
            "{} does not match {sum}: {}",
            archive.display(),
            String::from_utf8_lossy(&check.stdout)
        );
        archive
    })
}

/// Unpacks `archive` into `dest` and returns its one top folder.
pub fn unpack(archive: &Path, dest: &Path) -> PathBuf {
    let st = Command::new("tar")
        .arg("-xzf")
        .arg(archive)
        .arg("-C")
        .arg(dest)
        .status()
        .expect("tar");
    assert!(st.success(), "unpack {}", archive.display());
    std::fs::read_dir(dest)
        .expect("list")
        .flatten()
        .find(|e| e.path().is_dir())
        .expect("one folder")
        .path()
}
