//! `make package-check`: the arm64 artifacts `sam build` left for
//! `sam deploy` (`.aws-sam/build/<Function>/bootstrap`), each checked to be
//! an aarch64 executable under the size limit and booted under qemu against
//! the local Runtime API, the emulator and the upstream stubs, answering its
//! sample event as it would on Lambda: `/health` for the HTTP functions, the
//! SQS batch for rollup, the schedule event for price-fetch, a streamed
//! reply for chat-stream.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::cloud::template::{FunctionSpec, Template, Trigger};
use crate::tools::rig::{Rig, streams};
use crate::tools::runtime_api::{Answer, Harness};

/// Each function's zip must stay at or under this (the budget; Lambda's
/// own limit for a direct upload is 50 MB).
pub const ZIP_LIMIT_BYTES: u64 = 6 * 1024 * 1024;

/// `e_machine` of an aarch64 ELF file.
const EM_AARCH64: u16 = 183;

/// Where `sam build` leaves `function`'s bootstrap.
pub fn artifact(root: &Path, function: &FunctionSpec) -> PathBuf {
    root.join(".aws-sam/build")
        .join(&function.logical_id)
        .join("bootstrap")
}

/// Whether `binary` is an aarch64 ELF executable.
pub fn is_aarch64(binary: &Path) -> Result<bool, String> {
    let bytes = std::fs::read(binary).map_err(|e| format!("{}: {e}", binary.display()))?;
    Ok(bytes.starts_with(b"\x7fELF")
        && bytes.get(18..20) == Some(EM_AARCH64.to_le_bytes().as_slice()))
}

/// The first of these on PATH: the program that runs an aarch64 binary here.
fn qemu() -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["qemu-aarch64-static", "qemu-aarch64"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
        .ok_or_else(|| "qemu-aarch64-static not found (apt-get install qemu-user-static)".into())
}

/// Checks the packaged functions named in `only` (all of them if empty).
pub async fn check(root: &Path, only: &[String]) -> Result<(), String> {
    let template =
        Template::load(&root.join("template.yaml").to_string_lossy()).map_err(|e| e.to_string())?;
    let functions: Vec<FunctionSpec> = template
        .functions()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|f| only.is_empty() || only.contains(&f.binary))
        .collect();
    if functions.len() < only.len().max(1) {
        return Err(format!("unknown function among {only:?}"));
    }
    let rig = Rig::start(root, &template, "ingot-package").await?;
    let mut harness = Harness::start().await?.with_runner(qemu()?);
    for function in &functions {
        let binary = artifact(root, function);
        if !is_aarch64(&binary)? {
            return Err(format!("{} is not an aarch64 executable", binary.display()));
        }
        let zip = crate::tools::bench::zipped_size(&binary)?;
        if zip > ZIP_LIMIT_BYTES {
            return Err(format!(
                "{}: {zip} bytes zipped, over the limit",
                function.binary
            ));
        }
        let (env, event) = rig.sample(root, function).await?;
        let (_, _, _, answer) = harness
            .cold_start(&binary, &function.binary, &env, &event)
            .await?;
        let answered = describe(function, &answer)?;
        println!(
            "{}: aarch64, {:.1} MiB zipped, booted under qemu, {answered}",
            function.binary,
            zip as f64 / 1_048_576.0,
        );
    }
    Ok(())
}

/// What `answer` shows, if it is the answer `function` should give.
fn describe(function: &FunctionSpec, answer: &Answer) -> Result<String, String> {
    let name = &function.binary;
    if streams(function) {
        return match answer.first_delta {
            Some(_) => Ok("streamed a chat reply".to_owned()),
            None => Err(format!("{name} streamed no content_delta")),
        };
    }
    let body: Value = serde_json::from_slice(&answer.body)
        .map_err(|e| format!("{name} answered with no JSON: {e}"))?;
    match function.triggers.first() {
        Some(Trigger::Http { .. }) => match body["statusCode"].as_u64() {
            Some(200) => Ok("/health answered 200".to_owned()),
            status => Err(format!("{name} /health answered {status:?}: {body}")),
        },
        Some(Trigger::Sqs(_)) => match body["batchItemFailures"].as_array() {
            Some(failures) if failures.is_empty() => {
                Ok("counted its SQS batch, no failures".to_owned())
            }
            _ => Err(format!("{name} did not count its batch: {body}")),
        },
        Some(Trigger::Schedule(_)) => match body["written"].as_object() {
            Some(written) if !written.is_empty() => {
                Ok(format!("fetched and stored {} prices", written.len()))
            }
            _ => Err(format!("{name} stored no prices: {body}")),
        },
        None => Err(format!("{name} has no trigger in the template")),
    }
}
