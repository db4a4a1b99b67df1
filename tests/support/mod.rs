//! Shared fixtures for the integration tests: one AWS emulator (moto) per
//! test binary on a free port, and unique names so tests never share state.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use local::template::{Resolver, Template};

pub const REGION: &str = "us-east-1";

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The emulator's endpoint, starting it on first use. It lives as long as
/// the test process: it is spawned from a thread that never ends and asks the
/// kernel to kill it when its parent dies, so no run leaves one behind.
pub fn emulator() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let port = free_port();
            let mut command = Command::new(moto_server());
            command
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: prctl is async-signal-safe; it only sets this child's
            // parent-death signal.
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = command.spawn();
            let _ = tx.send(child.map(|_| port).map_err(|e| e.to_string()));
            loop {
                std::thread::park();
            }
        });
        let port = rx.recv().expect("emulator thread").unwrap_or_else(|e| {
            panic!("cannot start moto_server ({e}); run `make venv` or set MOTO_SERVER")
        });
        wait_for(port);
        format!("http://127.0.0.1:{port}")
    })
}

fn moto_server() -> PathBuf {
    if let Ok(path) = std::env::var("MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let venv = root().join(".venv/bin/moto_server");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("moto_server")
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_for(port: u16) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "moto_server did not start on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SDK configuration for the emulator.
pub async fn aws() -> aws_config::SdkConfig {
    local::bootstrap::emulator_config(emulator(), REGION).await
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The real template bootstrapped into the emulator as its own stack:
/// returns the resolver and the environment every function gets.
pub async fn stack() -> (Resolver, shared::config::Env) {
    let template =
        Template::load(&root().join("template.yaml").to_string_lossy()).expect("template");
    let mut resolver = template
        .resolver(
            &unique("ingot"),
            REGION,
            local::bootstrap::ACCOUNT_ID,
            &[("Stage", "test")],
        )
        .expect("resolver");
    local::bootstrap::bootstrap(&template, &mut resolver, &aws().await)
        .await
        .expect("bootstrap");
    let env = local::bootstrap::function_environment(&template, &resolver, emulator(), REGION)
        .expect("environment");
    let env = shared::config::Env::from_pairs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    (resolver, env)
}

/// Every HTTP function's real app, configured from `env` and the emulator.
pub async fn http_apps(env: &shared::config::Env) -> Vec<(&'static str, axum::Router)> {
    let aws = aws().await;
    vec![
        (
            "prices",
            prices::app(&prices::Config::from_env(env).unwrap(), &aws),
        ),
        (
            "ingest",
            ingest::app(&ingest::Config::from_env(env).unwrap(), &aws),
        ),
        (
            "usage",
            usage::app(&usage::Config::from_env(env).unwrap(), &aws),
        ),
        (
            "chat-stream",
            chat_stream::app(&chat_stream::Config::from_env(env).unwrap(), &aws),
        ),
    ]
}
