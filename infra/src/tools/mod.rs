//! Tools run against the local cloud or a deployed stage: benchmarks of the
//! functions' binaries, the load test with its exact count check, and the
//! operations on a stage's data (redrive, branch).

pub mod bench;
pub mod loadtest;
pub mod ops;
