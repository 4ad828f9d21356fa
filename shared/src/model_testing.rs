//! What the model-based tests of the services share (test builds only): how many random
//! sequences each property runs, and the lock runner over a throw-away folder with the
//! product's wait and poll. It must never be compiled into anything but the library's tests.

use crate::lock::LockRunner;
use std::path::Path;
use std::time::Duration;

/// 48 random sequences per property, nothing persisted: a failure prints its smallest case.
pub fn cases() -> proptest::prelude::ProptestConfig {
    proptest::prelude::ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..proptest::prelude::ProptestConfig::default()
    }
}

/// The lock runner of a test tree at `dir`, waiting 300 ms and polling every 25 ms.
pub fn locks(dir: &Path) -> LockRunner {
    LockRunner::new(
        dir.join("lock"),
        Duration::from_millis(300),
        Duration::from_millis(25),
    )
}
