//! Shared by the property tests.

use proptest::test_runner::Config as ProptestConfig;

/// `cases` random cases; a failure is printed with its minimal input, never written into the
/// source tree.
pub fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}
