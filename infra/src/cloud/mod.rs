//! The local cloud `make dev` runs: the AWS emulator with the template's
//! resources, the functions behind a Lambda port, each in a sandbox that
//! keeps its Lambda limits, and the event sources cargo-lambda lacks.

pub mod bootstrap;
pub mod dev;
pub mod emulator;
pub mod front;
pub mod invoke;
pub mod proxy;
pub mod pump;
pub mod sandbox;
pub mod schedule;
pub mod stubs;
pub mod template;
