//! `make dev`: the whole system on one machine.
//!
//! Starts (or reuses) the AWS emulator, creates the template's resources,
//! builds every function, serves them with `cargo lambda watch`, and runs the
//! event sources cargo-lambda lacks (SQS → rollup, schedule → price-fetch).
//! Every component's output goes to the terminal and to `.local/dev.log`,
//! prefixed with its name. Ctrl-C, at any point, stops every process it
//! started, children included (each runs in its own process group), so no
//! port stays taken.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::cloud::bootstrap::{
    ACCOUNT_ID, bootstrap, emulator_config, merged_environment, queue_arn,
};
use crate::cloud::emulator::{Emulator, port_open, wait_for_port};
use crate::cloud::invoke::LambdaInvoker;
use crate::cloud::pump::Pump;
use crate::cloud::sandbox::{SETTINGS_VAR, Settings};
use crate::cloud::schedule;
use crate::cloud::template::{Template, Trigger};

/// Where things run; every port overridable for a second checkout.
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub root: PathBuf,
    pub emulator_port: u16,
    pub lambda_port: u16,
    pub stack: String,
    pub region: String,
    /// Serve optimised builds (`INGOT_RELEASE=1`).
    pub release: bool,
    /// Instances per function at most (`INGOT_CONCURRENCY`, default 4): Lambda
    /// scales out under load, and so does `make dev`, up to this.
    pub concurrency: u64,
    /// Where the log and the functions' env file go (`INGOT_STATE_DIR`,
    /// default `.local`).
    pub state_dir: PathBuf,
}

impl DevOptions {
    /// From `INGOT_EMULATOR_PORT` (4566) and `INGOT_LAMBDA_PORT` (9000).
    pub fn from_env(root: PathBuf) -> Result<Self, String> {
        let port = |name: &str, default: u16| match std::env::var(name) {
            Ok(v) => v.parse().map_err(|_| format!("{name}={v:?} is not a port")),
            Err(_) => Ok(default),
        };
        let concurrency = match std::env::var("INGOT_CONCURRENCY") {
            Ok(v) => v
                .parse()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| format!("INGOT_CONCURRENCY={v:?} is not a count ≥ 1"))?,
            Err(_) => 4,
        };
        Ok(Self {
            emulator_port: port("INGOT_EMULATOR_PORT", 4566)?,
            lambda_port: port("INGOT_LAMBDA_PORT", 9000)?,
            concurrency,
            stack: "ingot-local".to_owned(),
            region: "us-east-1".to_owned(),
            release: std::env::var("INGOT_RELEASE").is_ok_and(|v| v == "1"),
            state_dir: std::env::var_os("INGOT_STATE_DIR")
                .map_or_else(|| root.join(".local"), PathBuf::from),
            root,
        })
    }

    pub fn emulator_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.emulator_port)
    }

    pub fn lambda_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.lambda_port)
    }
}

/// Terminal + `.local/dev.log`, shared by every component. One thread
/// writes, in batches at most every 20 ms: under load the functions log about
/// a thousand lines a second, and a write per line (each also waking
/// cargo-lambda's watcher of this directory) cost more CPU than they did.
#[derive(Clone)]
pub struct Log {
    lines: std::sync::mpsc::Sender<Entry>,
}

enum Entry {
    Line(Vec<u8>),
    /// Everything before this is written: then answer.
    Flush(std::sync::mpsc::Sender<()>),
}

impl Log {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (lines, entries) = std::sync::mpsc::channel::<Entry>();
        std::thread::spawn(move || {
            while let Ok(first) = entries.recv() {
                std::thread::sleep(Duration::from_millis(20));
                let mut batch = Vec::new();
                let mut flushed = Vec::new();
                for entry in std::iter::once(first).chain(entries.try_iter()) {
                    match entry {
                        Entry::Line(line) => batch.extend(line),
                        Entry::Flush(done) => flushed.push(done),
                    }
                }
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(&batch).and_then(|()| stdout.flush());
                let _ = file.write_all(&batch);
                for done in flushed {
                    let _ = done.send(());
                }
            }
        });
        Ok(Self { lines })
    }

    pub fn line(&self, component: &str, text: &str) {
        let line = format!("[{component:>6}] {text}\n");
        let _ = self.lines.send(Entry::Line(line.into_bytes()));
    }

    /// Waits until every line so far is written.
    pub fn sync(&self) {
        let (done, written) = std::sync::mpsc::channel();
        if self.lines.send(Entry::Flush(done)).is_ok() {
            let _ = written.recv_timeout(Duration::from_secs(5));
        }
    }

    /// A writer for the runner's own tracing output, prefixed like the rest.
    pub fn tracing_writer(&self) -> impl Fn() -> Prefixed + Send + Sync + 'static {
        let log = self.clone();
        move || Prefixed(log.clone())
    }
}

/// Writes each record (tracing writes one per call) behind `[   dev]`.
pub struct Prefixed(Log);

impl Write for Prefixed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut line = b"[   dev] ".to_vec();
        line.extend_from_slice(buf);
        let _ = self.0.lines.send(Entry::Line(line));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A started process group.
struct Component {
    name: &'static str,
    child: Child,
    /// Kept from spawn: once the leader is reaped, `child.id()` is gone but
    /// its children may still run.
    group: i32,
}

impl Component {
    fn spawn(name: &'static str, command: &mut Command, log: &Log) -> Result<Self, String> {
        command
            .kill_on_drop(true)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; if this runner dies without
        // cleaning up (SIGKILL), the kernel asks the component to stop.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let group = child.id().map_or(0, |pid| pid as i32);
        forward(name, child.stdout.take(), log.clone());
        forward(name, child.stderr.take(), log.clone());
        Ok(Self { name, child, group })
    }

    /// SIGTERM to the whole group, SIGKILL after five seconds.
    async fn stop(mut self, log: &Log) {
        if self.group <= 0 {
            return;
        }
        // SAFETY: kill(2) with a negative pid signals the group we created.
        unsafe { libc::kill(-self.group, libc::SIGTERM) };
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            unsafe { libc::kill(-self.group, libc::SIGKILL) };
            let _ = self.child.wait().await;
        }
        // Stragglers the leader left behind (e.g. function processes).
        unsafe { libc::kill(-self.group, libc::SIGKILL) };
        log.line("dev", &format!("stopped {}", self.name));
    }
}

fn forward<R: AsyncRead + Unpin + Send + 'static>(name: &'static str, stream: Option<R>, log: Log) {
    let Some(stream) = stream else { return };
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            // moto logs every request; the pump alone polls once a second.
            let access_ok = name == Emulator::Moto.name() && line.contains("HTTP/1.1\" 2");
            if !access_ok {
                log.line(name, &line);
            }
        }
    });
}

/// Sets `name` in the functions' environment, replacing the template's value.
fn override_var(env: &mut Vec<(String, String)>, name: &str, value: &str) {
    env.retain(|(n, _)| n != name);
    env.push((name.to_owned(), value.to_owned()));
}

/// Runs everything until Ctrl-C or SIGTERM.
pub async fn run(options: DevOptions, log: Log) -> Result<(), String> {
    let template = Template::load(&options.root.join("template.yaml").to_string_lossy())
        .map_err(|e| e.to_string())?;
    let functions = template.functions().map_err(|e| e.to_string())?;
    if port_open(options.lambda_port) {
        return Err(format!(
            "port {} is taken (another `make dev`?); set INGOT_LAMBDA_PORT to use another",
            options.lambda_port
        ));
    }

    let mut components = Vec::new();
    let mut stop = Box::pin(stop_signal());
    // Startup can take minutes (the first build): a signal then stops it too.
    let result = tokio::select! {
        started = start(&options, &template, &functions, &log, &mut components) => started,
        reason = &mut stop => Err(format!("{reason} during startup")),
    };
    match &result {
        Err(error) => log.line("dev", &format!("error: {error}")),
        Ok(()) => {
            let reason = tokio::select! {
                reason = &mut stop => reason.to_owned(),
                (name, status) = first_exit(&mut components) => format!("{name} exited ({status})"),
            };
            log.line("dev", &format!("{reason}: stopping"));
        }
    }
    for component in components.into_iter().rev() {
        component.stop(&log).await;
    }
    log.sync();
    result
}

/// Resolves on Ctrl-C or SIGTERM, naming which.
async fn stop_signal() -> &'static str {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        () = terminate => "SIGTERM",
    }
}

/// Resolves when any component exits on its own.
async fn first_exit(components: &mut [Component]) -> (&'static str, std::process::ExitStatus) {
    loop {
        for component in components.iter_mut() {
            if let Ok(Some(status)) = component.child.try_wait() {
                return (component.name, status);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn start(
    options: &DevOptions,
    template: &Template,
    functions: &[crate::cloud::template::FunctionSpec],
    log: &Log,
    components: &mut Vec<Component>,
) -> Result<(), String> {
    // 1. The emulator: reuse a running one, so its data survives a rerun.
    if port_open(options.emulator_port) {
        log.line(
            "dev",
            &format!("reusing the emulator on port {}", options.emulator_port),
        );
    } else {
        let kind = Emulator::from_env()?;
        components.push(Component::spawn(
            kind.name(),
            &mut Command::from(kind.command(&options.root, options.emulator_port)),
            log,
        )?);
        wait_for_port(options.emulator_port, Duration::from_secs(30), kind.name()).await?;
    }

    // 2. The template's resources, and the functions' environment.
    let aws = emulator_config(&options.emulator_endpoint(), &options.region).await;
    let mut resolver = template
        .resolver(
            &options.stack,
            &options.region,
            ACCOUNT_ID,
            &[("Stage", "local")],
        )
        .map_err(|e| e.to_string())?;
    let generated = bootstrap(template, &mut resolver, &aws)
        .await
        .map_err(|e| e.to_string())?;
    let mut env = merged_environment(
        template,
        &resolver,
        &options.emulator_endpoint(),
        &options.region,
    )
    .map_err(|e| e.to_string())?;

    // 2b. Chat's upstreams: a local sign-in issuer (its token is printed
    //     below) and the Anthropic stub, unless ANTHROPIC_BASE_URL is set.
    let upstreams = crate::cloud::stubs::dev_upstreams()
        .await
        .map_err(|e| format!("chat stubs: {e}"))?;
    for (name, value) in [
        ("JWKS_URL", upstreams.jwks_url.as_str()),
        ("JWT_ISSUER", upstreams.issuer.issuer.as_str()),
        ("JWT_AUDIENCES", crate::cloud::stubs::DEV_AUDIENCE),
        ("ANTHROPIC_BASE_URL", upstreams.anthropic_url.as_str()),
    ] {
        override_var(&mut env, name, value);
    }
    // Prices from a local gold-api.com unless the real providers are wanted
    // (they need the network, and keys for all but gold-api.com).
    let live_providers = std::env::var("INGOT_LIVE_PROVIDERS").as_deref() == Ok("1");
    let mut price_stub = None;
    if !live_providers {
        let stub = crate::cloud::stubs::serve(crate::cloud::stubs::gold_api_com())
            .await
            .map_err(|e| format!("price stub: {e}"))?;
        for (name, value) in [
            ("GOLD_API_COM_BASE_URL", stub.as_str()),
            ("PROVIDER_ORDER", "gold-api.com"),
        ] {
            override_var(&mut env, name, value);
        }
        price_stub = Some(stub);
    }
    if let Some((_, secret)) = env.iter().find(|(n, _)| n == "ANTHROPIC_API_KEY_SECRET") {
        aws_sdk_secretsmanager::Client::new(&aws)
            .put_secret_value()
            .secret_id(secret)
            .secret_string(serde_json::json!({"api_key": upstreams.anthropic_key}).to_string())
            .send()
            .await
            .map_err(|e| format!("storing the Anthropic key: {e}"))?;
    }
    let token = upstreams
        .issuer
        .token("dev-user", Duration::from_secs(24 * 3600));
    let token_file = options.state_dir.join("dev-token");
    std::fs::write(&token_file, &token).map_err(|e| format!("{}: {e}", token_file.display()))?;
    // `make fuzz` signs in as its own user, so its requests never use up
    // dev-user's rate limits.
    let fuzz_token = upstreams
        .issuer
        .token("fuzz-user", Duration::from_secs(24 * 3600));
    let fuzz_file = options.state_dir.join("fuzz-token");
    std::fs::write(&fuzz_file, fuzz_token).map_err(|e| format!("{}: {e}", fuzz_file.display()))?;
    let sandbox_file = options.state_dir.join("sandbox.json");
    let sandbox = Settings::of(functions, options.state_dir.join("slots"));
    let body = serde_json::to_vec_pretty(&sandbox).map_err(|e| e.to_string())?;
    std::fs::write(&sandbox_file, body).map_err(|e| format!("{}: {e}", sandbox_file.display()))?;
    let env_file = options.state_dir.join("functions.env");
    let body: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(&env_file, body).map_err(|e| format!("{}: {e}", env_file.display()))?;
    log.line(
        "dev",
        &format!(
            "resources ready; function environment in {}",
            env_file.display()
        ),
    );

    // 3. Build each function the way `cargo lambda watch` will run it (one
    //    binary at a time, so cargo's feature resolution matches), so the
    //    first request does not wait for a compile.
    crate::claim_target_dir(&options.root)?;
    let profile: &[&str] = if options.release { &["--release"] } else { &[] };
    for function in functions {
        log.line(
            "build",
            &format!("cargo build {profile:?} --bin {}", function.binary),
        );
        let status = Command::new("cargo")
            .args(["build", "--quiet", "--bin", &function.binary])
            .args(profile)
            .current_dir(&options.root)
            .status()
            .await
            .map_err(|e| format!("cargo build: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build --bin {} failed", function.binary));
        }
    }

    // 4. The functions, each instance in a sandbox that keeps the
    //    template's limits (cargo runs it around every function binary),
    //    behind the front door on the Lambda port.
    let this = std::env::current_exe().map_err(|e| format!("infra's path: {e}"))?;
    let (runner, sandboxed) = Settings::runner(&this);
    let front = tokio::net::TcpListener::bind(("127.0.0.1", options.lambda_port))
        .await
        .map_err(|e| format!("port {}: {e}", options.lambda_port))?;
    let private_port = crate::cloud::emulator::free_port().map_err(|e| e.to_string())?;
    components.push(Component::spawn(
        "lambda",
        Command::new("cargo")
            .args([
                "lambda",
                "watch",
                "--quiet",
                "--disable-cors",
                "-A",
                "127.0.0.1",
                "-P",
            ])
            .arg(private_port.to_string())
            .arg("--concurrency")
            .arg(options.concurrency.to_string())
            .args(profile)
            .arg("--env-file")
            .arg(&env_file)
            .env(runner, sandboxed)
            .env(SETTINGS_VAR, &sandbox_file)
            .current_dir(&options.root),
        log,
    )?);
    wait_for_port(private_port, Duration::from_secs(60), "cargo lambda watch").await?;
    tokio::spawn(async move {
        crate::cloud::front::serve(front, &format!("http://127.0.0.1:{private_port}")).await;
    });

    // 5. The event sources.
    let longest = functions.iter().map(|f| f.timeout_secs).max().unwrap_or(3);
    let invoker = LambdaInvoker::new(
        &options.lambda_endpoint(),
        Duration::from_secs(longest + 10),
    );
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let mut urls = Vec::new();
    for function in functions {
        for trigger in &function.triggers {
            match trigger {
                Trigger::Http { streaming } => urls.push(format!(
                    "  {:<12} {}/lambda-url/{}/health{}",
                    function.binary,
                    options.lambda_endpoint(),
                    function.binary,
                    if *streaming {
                        "   (streaming: curl -N)"
                    } else {
                        ""
                    }
                )),
                Trigger::Sqs(source) => {
                    let queue_url = resolver
                        .reference(&source.queue)
                        .ok_or_else(|| format!("queue {} was not created", source.queue))?
                        .to_owned();
                    let pump = Pump {
                        queue_arn: queue_arn(&sqs, &queue_url)
                            .await
                            .map_err(|e| e.to_string())?,
                        sqs: sqs.clone(),
                        queue_url: queue_url.clone(),
                        region: options.region.clone(),
                        source: source.clone(),
                        function: function.binary.clone(),
                        invoker: invoker.clone(),
                    };
                    // Lambda polls with several batches in flight (5 to
                    // start, or ScalingConfig.MaximumConcurrency).
                    let pollers = source.max_concurrency.unwrap_or(5).min(options.concurrency);
                    for _ in 0..pollers {
                        let pump = pump.clone();
                        tokio::spawn(async move { pump.run().await });
                    }
                    urls.push(format!("  {:<12} ← SQS {queue_url}", function.binary));
                }
                Trigger::Schedule(source) => {
                    let every = schedule::period(&source.expression).map_err(|e| e.to_string())?;
                    tokio::spawn(schedule::run(
                        invoker.clone(),
                        function.binary.clone(),
                        options.region.clone(),
                        source.clone(),
                        every,
                    ));
                    urls.push(format!(
                        "  {:<12} ← {} (now: make trigger FUNCTION={})",
                        function.binary, source.expression, function.binary
                    ));
                }
            }
        }
    }

    let mut summary = String::from("Ingot is up.\n");
    summary.push_str(&urls.join("\n"));
    summary.push_str(&format!(
        "\n  emulator     {} (AWS_ENDPOINT_URL)\n",
        options.emulator_endpoint()
    ));
    for secret in &generated {
        summary.push_str(&format!(
            "  secret       {} = {}\n",
            secret.name, secret.value
        ));
    }
    summary.push_str(&format!(
        "  prices       {}\n  chat         {} ({}); sign-in token for dev-user in {}:\n\
         \x20              curl -N -H \"Authorization: Bearer $(cat {})\" -d '{{\"message\":\"hello\"}}' {}/lambda-url/chat-stream/api/v1/chat/stream\n",
        match &price_stub {
            None => "live providers (INGOT_LIVE_PROVIDERS=1)".to_owned(),
            Some(stub) => format!(
                "gold-api.com stub {stub} (INGOT_LIVE_PROVIDERS=1 for the real providers);\n\
                 \x20              move gold: curl -X PUT -d 2750 {stub}/__stub/price/XAU, then make trigger FUNCTION=price-fetch"
            ),
        },
        if upstreams.stubbed { "Anthropic stub" } else { "Anthropic" },
        upstreams.anthropic_url,
        token_file.display(),
        token_file.display(),
        options.lambda_endpoint(),
    ));
    summary.push_str(&format!(
        "  logs         {}    (Ctrl-C stops everything)",
        options.state_dir.join("dev.log").display()
    ));
    for line in summary.lines() {
        log.line("dev", line);
    }
    Ok(())
}
