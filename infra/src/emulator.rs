//! Starting the AWS emulator (moto) — one way, used by `make dev`, the
//! integration tests and the benchmark.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The moto binary: `$MOTO_SERVER`, else the project's `.venv`, else `PATH`.
pub fn moto_server(root: &Path) -> PathBuf {
    if let Some(path) = std::env::var_os("MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let venv = root.join(".venv/bin/moto_server");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("moto_server")
    }
}

/// The command that serves the emulator on `127.0.0.1:port`. The child is
/// killed by the kernel if the thread that spawned it dies, so an aborted
/// run never leaves an emulator holding the port.
pub fn command(root: &Path, port: u16) -> std::process::Command {
    let mut command = std::process::Command::new(moto_server(root));
    command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
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

/// A port nothing listens on right now.
pub fn free_port() -> std::io::Result<u16> {
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
