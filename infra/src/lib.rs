//! The local cloud behind `make dev`, and the tools around it.
//!
//! Neither SAM local (it needs a container runtime) nor cargo-lambda (it runs
//! functions, not event sources) can run Ingot here on their own, so this
//! crate supplies what is missing, all read from `template.yaml`:
//! - [`template`]: the resources and functions the template declares;
//! - [`emulator`]: starts the AWS emulator (moto);
//! - [`bootstrap`]: creates the template's resources in it;
//! - [`pump`]: Lambda's SQS event source mapping (batches, partial failures);
//! - [`schedule`]: EventBridge Scheduler's `rate(...)` schedules;
//! - [`invoke`]: calls a function through cargo-lambda's Invoke API;
//! - [`dev`]: runs all of it together and stops it cleanly;
//! - [`bench`]: measures the functions' release binaries (`make bench`);
//! - [`loadtest`]: load against `make dev`, then an exact count check (`make loadtest`);
//! - [`stubs`]: a local sign-in issuer and Anthropic stub for chat;
//! - [`ops`]: `make redrive` (DLQ back to the queue) and `make branch`
//!   (one stage's tables into another's, at a point in time).

pub mod bench;
pub mod bootstrap;
pub mod dev;
pub mod emulator;
pub mod invoke;
pub mod loadtest;
pub mod ops;
pub mod pump;
pub mod schedule;
pub mod stubs;
pub mod template;
