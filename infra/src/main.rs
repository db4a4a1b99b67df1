//! `infra`: the local cloud's command line (see the crate docs).
//!
//! - `infra dev`: everything, until Ctrl-C (`make dev`);
//! - `infra sandbox <program>`: one function instance with its Lambda
//!   limits (cargo's runner under `make dev`);
//! - `infra trigger <function>`: fire a scheduled function now;
//! - `infra bench`: size, cold start and memory of each function (`make bench`;
//!   `bench chat`, `bench floor`: one part of it);
//! - `infra package-check [<function>...]`: boot the arm64 artifacts of
//!   `sam build` under qemu (`make package-check`);
//! - `infra loadtest`: load against a running `make dev` (`make loadtest`);
//! - `infra redrive <stage>`: DLQ back onto the queue (`make redrive`);
//! - `infra branch <from> <to> [<RFC 3339 time>]`: tables of one stage
//!   into another's at a point in time (`make branch`).

use std::process::ExitCode;

use infra::cloud::dev::{self, DevOptions, Log};
use infra::cloud::schedule;
use infra::cloud::template::Template;
use infra::tools::bench;

const USAGE: &str = "usage: infra dev | trigger <function> | bench [chat | floor] | package-check [<function>...] | loadtest | redrive <stage> | branch <from> <to> [<time>]";

// One thread: the local cloud's hops are small, and cross-thread wake-ups cost
// more than they do (each sandbox is its own process).
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // cargo's runner under `make dev`: before anything that needs a checkout.
    let raw: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if raw.first().is_some_and(|a| a == "sandbox") {
        return match raw.get(1) {
            Some(program) => infra::cloud::sandbox::run(program.clone(), raw[2..].to_vec())
                .await
                .unwrap_or_else(|e| fail(&e)),
            None => fail("usage: infra sandbox <program> [args...]"),
        };
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = match infra::workspace_root() {
        Ok(root) => root,
        Err(e) => return fail(&e),
    };
    let options = match DevOptions::from_env(root.clone()) {
        Ok(o) => o,
        Err(e) => return fail(&e),
    };
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["dev"] => {
            let log = match Log::open(&options.state_dir.join("dev.log")) {
                Ok(log) => log,
                Err(e) => return fail(&e.to_string()),
            };
            tracing_subscriber::fmt()
                .with_writer(log.tracing_writer())
                .with_ansi(false)
                .init();
            dev::run(options, log).await
        }
        ["trigger", function] => trigger(&root, &options, function).await,
        ["loadtest"] => {
            let functions = load_template(&root).and_then(|t| {
                t.functions()
                    .map(|f| f.into_iter().map(|f| f.binary).collect())
                    .map_err(|e| e.to_string())
            });
            let local = functions.map(|functions| infra::tools::loadtest::Target::Local {
                root: root.clone(),
                lambda: options.lambda_endpoint(),
                emulator: options.emulator_endpoint(),
                region: options.region.clone(),
                stack: options.stack.clone(),
                log: options.state_dir.join("dev.log"),
                functions,
            });
            match local.and_then(infra::tools::loadtest::LoadOptions::from_env) {
                Ok(load) => infra::tools::loadtest::run(load).await,
                Err(e) => Err(e),
            }
        }
        ["bench", "chat"] => bench::run_part(&root, bench::Part::Chat).await,
        ["bench", "floor"] => bench::run_part(&root, bench::Part::Floor).await,
        ["bench"] => {
            let runs = std::env::var("INGOT_BENCH_RUNS")
                .ok()
                .and_then(|r| r.parse().ok())
                .unwrap_or(20);
            bench::run(&root, runs).await
        }
        ["package-check", only @ ..] => {
            let only: Vec<String> = only.iter().map(|f| (*f).to_owned()).collect();
            infra::tools::package::check(&root, &only).await
        }
        ["redrive", stage] => match load_template(&root) {
            Ok(template) => {
                infra::tools::ops::redrive_stage(
                    &template,
                    stage,
                    &options.emulator_endpoint(),
                    &options.region,
                )
                .await
            }
            Err(e) => Err(e),
        },
        ["branch", from, to, rest @ ..] if rest.len() <= 1 => {
            let at = match rest.first().filter(|t| !t.is_empty()) {
                None => Ok(None),
                Some(t) => chrono::DateTime::parse_from_rfc3339(t)
                    .map(|t| Some(t.to_utc()))
                    .map_err(|e| format!("AT={t:?} is not an RFC 3339 time: {e}")),
            };
            match (load_template(&root), at) {
                (Ok(template), Ok(at)) => {
                    infra::tools::ops::branch(
                        &template,
                        from,
                        to,
                        at,
                        &options.emulator_endpoint(),
                        &options.region,
                    )
                    .await
                }
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        }
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn load_template(root: &std::path::Path) -> Result<Template, String> {
    Template::load(&root.join("template.yaml").to_string_lossy()).map_err(|e| e.to_string())
}

fn fail(message: &str) -> ExitCode {
    eprintln!("infra: {message}");
    ExitCode::FAILURE
}

async fn trigger(
    root: &std::path::Path,
    options: &DevOptions,
    function: &str,
) -> Result<(), String> {
    let endpoint = options.lambda_endpoint();
    let result = schedule::trigger(root, &endpoint, &options.region, function).await?;
    println!("{result}");
    Ok(())
}
