//! Tools run against the local cloud or a deployed stage: benchmarks of the
//! functions' binaries, the arm64 package check, the load test with its
//! exact count check, and the operations on a stage's data (redrive, branch).
//! [`rig`] and [`runtime_api`] run a real function binary away from
//! `make dev`.

pub mod bench;
pub mod loadtest;
pub mod ops;
pub mod package;
pub mod rig;
pub mod runtime_api;
