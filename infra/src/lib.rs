//! The local cloud behind `make dev`, and the tools run against it.
//!
//! Neither SAM local (it needs a container runtime) nor cargo-lambda (it runs
//! functions, not event sources) can run Ingot here on their own, so
//! [`cloud`] supplies what is missing, all read from `template.yaml`:
//! - [`cloud::template`]: the resources and functions the template declares;
//! - [`cloud::emulator`]: starts the AWS emulator (ministack, or moto);
//! - [`cloud::bootstrap`]: creates the template's resources in it;
//! - [`cloud::pump`]: Lambda's SQS event source mapping (batches, partial failures);
//! - [`cloud::schedule`]: EventBridge Scheduler's `rate(...)` schedules;
//! - [`cloud::front`]: the Lambda port, in front of cargo-lambda (which
//!   deadlocks past 100 queued requests of one function);
//! - [`cloud::proxy`]: the HTTP pass-through the front door and sandboxes use;
//! - [`cloud::invoke`]: calls a function through cargo-lambda's Invoke API;
//! - [`cloud::sandbox`]: each function instance's Lambda limits (deadline,
//!   memory, reserved concurrency), which cargo-lambda does not keep;
//! - [`cloud::stubs`]: a local sign-in issuer and Anthropic stub for chat;
//! - [`cloud::dev`]: runs all of it together and stops it cleanly.
//!
//! [`tools`] measure and operate that cloud, or a deployed stage:
//! - [`tools::bench`]: measures the functions' release binaries (`make bench`);
//! - [`tools::package`]: boots the arm64 artifacts under qemu (`make package-check`);
//! - [`tools::rig`], [`tools::runtime_api`]: a function binary run as Lambda
//!   runs it, against a private emulator and upstream stubs;
//! - [`tools::loadtest`]: load, then an exact count check (`make loadtest`);
//! - [`tools::ops`]: `make redrive` (DLQ back to the queue) and `make branch`
//!   (one stage's tables into another's, at a point in time).

pub mod cloud;
pub mod tools;

use std::path::{Path, PathBuf};

/// The checkout to serve: the nearest directory at or above the current one
/// that holds `template.yaml` beside a `Cargo.toml`. Found at run time, never
/// baked in at compile time: clones that share one target directory share
/// this binary, and each must still serve its own code.
pub fn workspace_root() -> Result<PathBuf, String> {
    let here = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
    here.ancestors()
        .find(|dir| is_workspace(dir))
        .map(Path::to_path_buf)
        .ok_or_else(|| {
            format!(
                "{} is not inside an Ingot checkout (no template.yaml beside a Cargo.toml)",
                here.display()
            )
        })
}

fn is_workspace(dir: &Path) -> bool {
    dir.join("template.yaml").is_file() && dir.join("Cargo.toml").is_file()
}

/// Clones may share one target directory (a cache, `CARGO_TARGET_DIR`).
/// cargo judges a workspace crate fresh by file times, so once another clone
/// has built there, this clone's older files look built and cargo would run
/// the other clone's binaries. When the last checkout to build here was
/// another one, this touches the checkout's tracked files, so cargo rebuilds
/// its crates (dependencies stay cached), and records the checkout.
pub fn claim_target_dir(root: &Path) -> Result<(), String> {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let mark = target.join(".ingot-checkout");
    let this = root.to_string_lossy();
    if std::fs::read_to_string(&mark).is_ok_and(|last| last == this) {
        return Ok(());
    }
    let listed = std::process::Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root)
        .output()
        .map_err(|e| format!("git ls-files: {e}"))?;
    if !listed.status.success() {
        return Err(format!(
            "git ls-files in {}: {}",
            root.display(),
            String::from_utf8_lossy(&listed.stderr).trim()
        ));
    }
    let now = std::time::SystemTime::now();
    for file in listed.stdout.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let path = root.join(String::from_utf8_lossy(file).as_ref());
        // A tracked file deleted in the work tree has nothing to touch.
        if let Ok(file) = std::fs::File::options().write(true).open(&path) {
            file.set_modified(now)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    std::fs::create_dir_all(&target).map_err(|e| format!("{}: {e}", target.display()))?;
    std::fs::write(&mark, this.as_bytes()).map_err(|e| format!("{}: {e}", mark.display()))
}
