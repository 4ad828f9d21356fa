//! Replays the committed corpus (`fuzz/corpus/<target>/`) and every input a run once found
//! (`fuzz/regressions/<target>/`) through the target functions, so that plain `cargo test`
//! checks them without AFL; an empty corpus folder fails, because it would replay nothing.

use std::path::Path;

#[test]
fn every_corpus_and_regression_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, target) in formwarden_fuzz::TARGETS {
        for (kind, must_have) in [("corpus", true), ("regressions", false)] {
            let dir = root.join(kind).join(name);
            let mut files: Vec<_> = match std::fs::read_dir(&dir) {
                Ok(d) => d.map(|e| e.unwrap().path()).collect(),
                Err(_) => Vec::new(),
            };
            files.retain(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"));
            files.sort();
            assert!(
                !must_have || !files.is_empty(),
                "{} has no inputs",
                dir.display()
            );
            for file in files {
                let data = std::fs::read(&file).unwrap();
                let run = std::panic::catch_unwind(|| target(&data));
                assert!(run.is_ok(), "{} fails its target", file.display());
            }
        }
    }
}
