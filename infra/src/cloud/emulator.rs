//! Starting the AWS emulator — one way, used by `make dev`, the integration
//! tests and the benchmarks.
//!
//! Two emulators speak the DynamoDB, SQS and Secrets Manager APIs Ingot uses;
//! `INGOT_EMULATOR` picks one. ministack is the default: it passes the
//! conformance suite (`tests/conformance.rs`) and carries the load test,
//! where moto copies a whole table per transaction item and falls over
//! (docs/local-cloud.md has the figures). Each lives in its own venv
//! (`.venv-<name>`, pinned by `make venv`) because their botocore pins clash.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The emulators the local cloud can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emulator {
    Ministack,
    Moto,
}

impl Emulator {
    /// `INGOT_EMULATOR` (`ministack`, the default, or `moto`).
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("INGOT_EMULATOR").as_deref() {
            Err(_) | Ok("" | "ministack") => Ok(Self::Ministack),
            Ok("moto") => Ok(Self::Moto),
            Ok(other) => Err(format!(
                "INGOT_EMULATOR={other:?}: expected ministack or moto"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Ministack => "ministack",
            Self::Moto => "moto",
        }
    }

    /// The server binary: `$INGOT_EMULATOR_BIN`, else the emulator's venv
    /// under `root`, else `PATH`.
    pub fn binary(self, root: &Path) -> PathBuf {
        if let Some(path) = std::env::var_os("INGOT_EMULATOR_BIN") {
            return PathBuf::from(path);
        }
        let file = match self {
            Self::Ministack => "ministack",
            Self::Moto => "moto_server",
        };
        let venv = root.join(format!(".venv-{}/bin/{file}", self.name()));
        if venv.exists() {
            venv
        } else {
            PathBuf::from(file)
        }
    }

    /// The command that serves this emulator on `127.0.0.1:port` only, with
    /// only the services Ingot uses. The child is killed by the kernel if the
    /// thread that spawned it dies, so an aborted run never leaves an
    /// emulator holding the port.
    pub fn command(self, root: &Path, port: u16) -> std::process::Command {
        let mut command = std::process::Command::new(self.binary(root));
        match self {
            Self::Ministack => {
                command
                    .env("GATEWAY_PORT", port.to_string())
                    .env("BIND_HOST", "127.0.0.1")
                    .env("SERVICES", "dynamodb,sqs,secretsmanager")
                    // Its IoT listener would otherwise open 0.0.0.0:8883.
                    .env("IOT_MTLS_ENABLED", "0")
                    .env("PERSIST_STATE", "0")
                    .env("LOG_LEVEL", "WARNING")
                    .env("MINISTACK_ACCOUNT_ID", crate::cloud::bootstrap::ACCOUNT_ID)
                    // infra/emulator/sitecustomize.py: FIFO sends that do
                    // not slow down as the queue's dedup window fills.
                    .env("PYTHONPATH", root.join("infra/emulator"));
            }
            Self::Moto => {
                command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            }
        }
        // SAFETY: prctl is async-signal-safe and only sets this child's
        // parent-death signal.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        command
    }
}

/// Where [`free_port`] looks: below Linux's ephemeral range (32768–60999 by
/// default), which the kernel hands out as the local port of outgoing
/// connections: a port chosen there could be taken by any connection made
/// before its server binds it (`make dev` binds its Lambda port only after
/// building every function).
const UNEPHEMERAL: std::ops::Range<u16> = 20_000..32_768;

/// A port nothing listens on right now, outside the ephemeral range when
/// one there is free.
pub fn free_port() -> std::io::Result<u16> {
    let span = u64::from(UNEPHEMERAL.end - UNEPHEMERAL.start);
    let start = uuid::Uuid::new_v4().as_u64_pair().0 % span;
    for step in 0..64 {
        let port = UNEPHEMERAL.start + ((start + step * 7919) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Waits until something listens on `port`.
pub async fn wait_for_port(port: u16, within: Duration, what: &str) -> Result<(), String> {
    let started = Instant::now();
    while !port_open(port) {
        if started.elapsed() > within {
            return Err(format!("{what} did not open port {port} within {within:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_is_bindable_and_outside_the_ephemeral_range() {
        let port = free_port().unwrap();
        assert!(UNEPHEMERAL.contains(&port), "{port}");
        std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    }
}
