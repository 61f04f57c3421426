//! `cargo xtask <task>`: the project's tasks, runnable on a fresh machine.
//!
//! - `examples`: install the wasm32-wasip2 target if missing and build every example
//!   handler into `examples/handlers/` (with its sidecars).
//! - `demo`: build the Rust examples and the host, enqueue jobs into a fresh embedded queue
//!   (`target/demo/jobhost.db`), run them with `jobhost run --drain`, and show the results.
//! - `test`: everything CI runs: examples, the host binary, and `cargo test --workspace`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const WASM_TARGET: &str = "wasm32-wasip2";
/// Example crates (folders under `examples/`) and the handler file name each produces.
const RUST_EXAMPLES: &[(&str, &str)] = &[
    ("thumbnail", "thumbnail"),
    ("report", "report"),
    ("fan-out", "fan_out"),
    ("flaky-api", "flaky_api"),
    ("webhook", "webhook"),
    ("archive", "archive"),
    ("upload-stats", "upload_stats"),
];

type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let result = match task.as_str() {
        "examples" => build_examples().map(|_| ()),
        "demo" => demo(),
        "test" => test(),
        _ => Err("usage: cargo xtask examples|demo|test".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The checkout this xtask was run from. `cargo run` sets `CARGO_MANIFEST_DIR` for the
/// process; the compile-time value is only a fallback, since a target folder shared between
/// checkouts (CI's) may hold an xtask binary built from another one.
fn root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The cargo target folder (`CARGO_TARGET_DIR` when set, as CI does).
fn target_root() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(root());
    command
}

fn run(command: &mut Command) -> Result {
    eprintln!("+ {command:?}");
    let status = command
        .status()
        .map_err(|e| format!("cannot start {command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed with {status}"))
    }
}

fn ensure_wasm_target() -> Result {
    let output = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    let installed = output.is_ok_and(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.trim() == WASM_TARGET)
    });
    if installed {
        Ok(())
    } else {
        run(Command::new("rustup").args(["target", "add", WASM_TARGET]))
    }
}

/// Builds every example into `examples/handlers/`; returns that folder.
fn build_examples() -> Result<PathBuf> {
    let out = build_rust_examples()?;
    let examples = root().join("examples");
    build_js_example(&examples.join("notify-js"), &out)?;
    let tools = Tools::ensure()?;
    build_python_example(&tools, &examples.join("generate-report-py"), &out)?;
    build_c_example(&tools, &examples.join("checksum-c"), &out)?;
    eprintln!(
        "built {} Rust, 1 JavaScript, 1 Python and 1 C handlers into {}",
        RUST_EXAMPLES.len(),
        out.display()
    );
    Ok(out)
}

/// Builds the Rust examples (and their sidecars) into `examples/handlers/`: all the demo
/// needs, with nothing but the wasm32-wasip2 target.
fn build_rust_examples() -> Result<PathBuf> {
    ensure_wasm_target()?;
    let examples = root().join("examples");
    let target_dir = target_root().join("wasm-examples");
    run(cargo()
        .args([
            "build",
            "--release",
            "--target",
            WASM_TARGET,
            "--manifest-path",
        ])
        .arg(examples.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir))?;
    let out = examples.join("handlers");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    for (folder, artifact) in RUST_EXAMPLES {
        let wasm = target_dir
            .join(WASM_TARGET)
            .join("release")
            .join(format!("{artifact}.wasm"));
        copy(&wasm, &out.join(format!("{folder}.wasm")))?;
        for ext in ["toml", "schema.json", "cases.json"] {
            let sidecar = examples.join(folder).join(format!("{folder}.{ext}"));
            if sidecar.is_file() {
                copy(&sidecar, &out.join(format!("{folder}.{ext}")))?;
            }
        }
    }
    // The archive example's granted folders (relative to the plugins folder).
    for dir in ["archive-in", "archive-out"] {
        std::fs::create_dir_all(out.join(dir)).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Builds the JavaScript example with componentize-js (installed by npm from the pinned
/// lock file into the example's own `node_modules/`, which later runs reuse).
fn build_js_example(dir: &Path, out: &Path) -> Result {
    let installed = dir.join("node_modules/.bin/componentize-js").is_file();
    if !installed {
        run(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund"])
            .current_dir(dir))?;
    }
    let wasm = dir.join("notify.wasm");
    if !up_to_date(
        &wasm,
        &[dir.join("notify.js"), root().join("wit/jobhost.wit")],
    ) {
        run(Command::new("npm")
            .args(["run", "--silent", "build"])
            .current_dir(dir))?;
    }
    copy(&wasm, &out.join("notify.wasm"))?;
    copy(
        &dir.join("notify.cases.json"),
        &out.join("notify.cases.json"),
    )
}

/// The pinned tools for the Python and C examples, installed once into a cache folder
/// (`JOBHOST_TOOLS`, default `~/.cache/jobhost/tools`) that later runs reuse.
struct Tools {
    /// `componentize-py`, in a venv made from `xtask/tools-requirements.txt` (with moto and
    /// cargo-lambda for the tests).
    componentize_py: PathBuf,
    /// `wit-bindgen` (C bindings) and `wasm-tools` (component new, validate): stand-ins
    /// built from `xtask/component-tools`.
    wit_bindgen: PathBuf,
    wasm_tools: PathBuf,
    /// The WASI preview-1 reactor adapter of the host's wasmtime version (for wasi-libc).
    wasi_adapter: PathBuf,
}

/// Debian packages for the C example: clang and wasm-ld 14, wasi-libc, jsmn (JSON tokens).
const APT_PACKAGES: &[&str] = &[
    "clang",
    "lld",
    "wasi-libc",
    "libclang-rt-dev-wasm32",
    "libjsmn-dev",
    // Scrapes the host in the metrics test.
    "prometheus",
    // The dashboard test's browser (driven by playwright-core from npm).
    "chromium",
    // The PostgreSQL queue's tests (initdb into a temp dir, one server per test run).
    "postgresql",
    // Certificates for the PostgreSQL TLS test.
    "openssl",
];

/// The `bin` folder of Debian's newest PostgreSQL (`/usr/lib/postgresql/N/bin`).
fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

impl Tools {
    fn dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("JOBHOST_TOOLS") {
            return PathBuf::from(dir);
        }
        let home = std::env::var_os("HOME").map_or_else(|| root().join("target"), PathBuf::from);
        home.join(".cache/jobhost/tools")
    }

    fn ensure() -> Result<Tools> {
        let dir = Self::dir();
        let bin = dir.join("bin");
        // `wit-bindgen c` and `wasm-tools component new|validate`, from the library crates
        // those CLIs are made of (xtask/component-tools): a few small crates to compile
        // rather than two large CLIs to install.
        run(cargo().args(["build", "-q", "-p", "jobhost-component-tools"]))?;
        let built = target_root().join("debug/component-tools");
        std::fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
        for name in ["wit-bindgen", "wasm-tools"] {
            let installed = bin.join(name);
            let _ = std::fs::remove_file(&installed);
            copy(&built, &installed)?;
        }
        let requirements = root().join("xtask/tools-requirements.txt");
        let venv = dir.join("py");
        let wanted = read(&requirements)?;
        if read(&venv.join("installed.txt")).ok().as_deref() != Some(wanted.as_str()) {
            run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
            run(Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
                .arg(&requirements))?;
            write(&venv.join("installed.txt"), &wanted)?;
        }
        let c_ready = Path::new("/usr/include/wasm32-wasi/stdlib.h").is_file()
            && Path::new("/usr/include/jsmn.h").is_file()
            && Command::new("clang").arg("--version").output().is_ok()
            && Command::new("wasm-ld").arg("--version").output().is_ok()
            && Command::new("prometheus").arg("--version").output().is_ok()
            && Path::new("/usr/bin/chromium").is_file()
            && postgres_bin().is_some();
        if !c_ready {
            let sudo = !Command::new("id")
                .arg("-u")
                .output()
                .is_ok_and(|o| o.stdout.starts_with(b"0"));
            let apt = |args: &[&str]| {
                let mut command = Command::new(if sudo { "sudo" } else { "apt-get" });
                if sudo {
                    command.arg("apt-get");
                }
                command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
                run(&mut command)
            };
            apt(&["update", "-q"])?;
            let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
            args.extend(APT_PACKAGES);
            apt(&args)?;
        }
        let wasi_adapter = dir.join("wasi_snapshot_preview1.reactor.wasm");
        std::fs::write(
            &wasi_adapter,
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )
        .map_err(|e| format!("write {}: {e}", wasi_adapter.display()))?;
        Ok(Tools {
            wasi_adapter,
            componentize_py: venv.join("bin/componentize-py"),
            wit_bindgen: bin.join("wit-bindgen"),
            wasm_tools: bin.join("wasm-tools"),
        })
    }

    /// A `PATH` with the tools first, for build scripts that call them by name.
    fn path(&self) -> std::ffi::OsString {
        let mut dirs = vec![Self::dir().join("bin"), Self::dir().join("py/bin")];
        dirs.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        std::env::join_paths(dirs).unwrap_or_default()
    }
}

/// Is `output` newer than every one of `inputs`?
fn up_to_date(output: &Path, inputs: &[PathBuf]) -> bool {
    modified(output).is_some_and(|built| {
        inputs
            .iter()
            .all(|src| modified(src).is_some_and(|m| m <= built))
    })
}

/// Builds the Python example with componentize-py (a ~18 MB component; the host
/// compiles it once into its cache).
fn build_python_example(tools: &Tools, dir: &Path, out: &Path) -> Result {
    let wasm = dir.join("generate-report.wasm");
    if !up_to_date(&wasm, &[dir.join("app.py"), root().join("wit/jobhost.wit")]) {
        run(Command::new(&tools.componentize_py)
            .arg("-d")
            .arg(root().join("wit"))
            .args(["-w", "job-plugin", "componentize", "app", "-o"])
            .arg(&wasm)
            .current_dir(dir))?;
    }
    copy(&wasm, &out.join("generate-report.wasm"))?;
    copy(
        &dir.join("generate-report.cases.json"),
        &out.join("generate-report.cases.json"),
    )
}

/// Builds the C example with its own `build.sh` (wit-bindgen c, clang, wasm-tools).
fn build_c_example(tools: &Tools, dir: &Path, out: &Path) -> Result {
    let wasm = dir.join("checksum.wasm");
    let inputs = [
        dir.join("checksum.c"),
        dir.join("build.sh"),
        root().join("wit/jobhost.wit"),
    ];
    if !up_to_date(&wasm, &inputs) {
        run(Command::new("sh")
            .arg("build.sh")
            .env("PATH", tools.path())
            .env("WIT_BINDGEN", &tools.wit_bindgen)
            .env("WASM_TOOLS", &tools.wasm_tools)
            .env("WASI_ADAPTER", &tools.wasi_adapter)
            .current_dir(dir))?;
    }
    copy(&wasm, &out.join("checksum.wasm"))?;
    copy(
        &dir.join("checksum.cases.json"),
        &out.join("checksum.cases.json"),
    )
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))
}

fn write(path: &Path, text: &str) -> Result {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn copy(from: &Path, to: &Path) -> Result {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("copy {} -> {}: {e}", from.display(), to.display()))
}

/// The demo builds only what it runs: the Rust examples, and the host with the dev profile
/// the tests build too (its Cranelift optimized, see Cargo.toml), so nothing is built twice.
fn demo() -> Result {
    let handlers = build_rust_examples()?;
    run(cargo().args(["build", "-p", "jobhost"]))?;
    let jobhost = target_root().join("debug/jobhost");
    let demo_dir = target_root().join("demo");
    let _ = std::fs::remove_dir_all(&demo_dir);
    std::fs::create_dir_all(&demo_dir).map_err(|e| e.to_string())?;
    let db = demo_dir.join("jobhost.db");
    let host = |args: &[&str]| -> Result<String> {
        let mut command = Command::new(&jobhost);
        command
            .args(args)
            .env("JOBHOST_DB", &db)
            .env("JOBHOST_PLUGINS", &handlers);
        eprintln!("\n$ jobhost {}", args.join(" "));
        let output = command.output().map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        print!("{stdout}");
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        Ok(stdout.trim().to_string())
    };
    let report = host(&[
        "enqueue",
        "report",
        r#"{"csv": "city,sales,units\nOslo,120.5,3\nLima,80,2\nOslo,10,1\n", "progress_every": 1}"#,
    ])?;
    host(&[
        "enqueue",
        "fan-out",
        r#"{"job": "report", "payloads": [{"csv": "a\n1\n2"}, {"csv": "b\n3"}]}"#,
    ])?;
    let flaky = host(&[
        "enqueue",
        "flaky-api",
        r#"{"url": "https://api.example.invalid/orders", "fail_until_attempt": 2, "retry_after_ms": 0}"#,
    ])?;
    let thumb = host(&[
        "enqueue",
        "thumbnail",
        r#"{"image": "bm90IGFuIGltYWdl", "size": 32}"#,
    ])?;
    eprintln!("\n# a payload that fails the schema is refused before it is enqueued (exit 2):");
    host(&["enqueue", "report", r#"{"csv": 42}"#])?;
    host(&["run", "--drain"])?;
    host(&["jobs", "list"])?;
    eprintln!("\n# retried once (attempt 1 got a 503), then done:");
    host(&["jobs", "show", &flaky])?;
    eprintln!("\n# dead-lettered: a permanent error");
    host(&["jobs", "show", &thumb])?;
    host(&["jobs", "show", &report])?;
    host(&["dlq", "list"])?;
    host(&["stats"])?;
    Ok(())
}

fn test() -> Result {
    build_examples()?;
    // The dashboard test's browser driver, pinned by its lock file.
    let walker = root().join("tests/dashboard");
    if !walker.join("node_modules/playwright-core").is_dir() {
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&walker))?;
    }
    // The binary the tests run and the tests themselves, in one build with the features
    // `cargo test` unifies, so that it builds nothing again; `cross`: the tests package
    // handlers for arm64 too.
    run(cargo().args([
        "build",
        "--workspace",
        "--bins",
        "--tests",
        "--features",
        "jobhost/cross",
    ]))?;
    let services = Services::start(&Tools::dir())?;
    let result = run(cargo()
        .args(["test", "--workspace", "--features", "jobhost/cross"])
        .envs(services.env.iter().map(|(k, v)| (k, v))));
    drop(services);
    result
}

/// The servers the integration tests talk to, on loopback ports: moto (SQS) and
/// cargo-lambda's Lambda Runtime API emulator. Stopped by PID when dropped.
struct Services {
    children: Vec<std::process::Child>,
    env: Vec<(String, String)>,
    /// Temporary folders removed when the services stop (PostgreSQL's data).
    dirs: Vec<PathBuf>,
}

/// Starts PostgreSQL from Debian's packages: `initdb` into a new folder of the system's
/// temp dir and the server on a free loopback port, as the unprivileged `postgres` user
/// when this runs as root (initdb refuses root). Durable as in production: `fsync` and
/// `synchronous_commit` on. Returns the port and the folder.
fn start_postgres(
    services: &mut Services,
    log: &dyn Fn(&str) -> Result<std::process::Stdio>,
) -> Result<(u16, PathBuf)> {
    let bin =
        postgres_bin().ok_or("PostgreSQL is not installed (Debian: apt-get install postgresql)")?;
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let data = std::env::temp_dir().join(format!("jobhost-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
    // As root, run as the `postgres` user Debian's package creates (the process itself,
    // not a wrapper, so that stopping it by PID stops the server).
    let ids = if root {
        let id = |flag: &str| -> Result<u32> {
            let out = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .map_err(|e| e.to_string())?;
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .map_err(|_| {
                    "no `postgres` user to run PostgreSQL as (it refuses root)".to_string()
                })
        };
        Some((id("-u")?, id("-g")?))
    } else {
        None
    };
    let as_postgres = |program: PathBuf| {
        let mut command = Command::new(program);
        if let Some((uid, gid)) = ids {
            use std::os::unix::process::CommandExt as _;
            command.uid(uid).gid(gid);
        }
        command
    };
    if let Some((uid, _)) = ids {
        run(Command::new("chown").arg(uid.to_string()).arg(&data))?;
    }
    let cluster = data.join("data");
    run(as_postgres(bin.join("initdb"))
        .arg("-D")
        .arg(&cluster)
        .args(["-A", "trust", "-U", "jobhost", "--no-sync"])
        .stdout(log("initdb.log")?))?;
    let port = free_port()?;
    let mut child = as_postgres(bin.join("postgres"))
        .arg("-D")
        .arg(&cluster)
        .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
        .arg(&data)
        .args([
            "-c",
            "fsync=on",
            "-c",
            "synchronous_commit=on",
            "-c",
            "max_connections=300",
        ])
        .stdout(log("postgres.log")?)
        .stderr(log("postgres.err")?)
        .spawn()
        .map_err(|e| format!("cannot start postgres: {e}"))?;
    let ready = wait_for_port(port, "postgres", &mut child);
    services.children.push(child);
    ready?;
    Ok((port, data))
}

fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn wait_for_port(port: u16, what: &str, child: &mut std::process::Child) -> Result {
    // A TCP check: the emulator would queue an HTTP GET as an invocation.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited with {status} before listening"));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Err(format!(
        "{what} did not listen on 127.0.0.1:{port} within 60 s"
    ))
}

impl Services {
    fn start(tools: &Path) -> Result<Services> {
        let mut services = Services {
            children: Vec::new(),
            env: Vec::new(),
            dirs: Vec::new(),
        };
        let logs = target_root().join("test-services");
        std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
        let log = |name: &str| {
            std::fs::File::create(logs.join(name))
                .map(std::process::Stdio::from)
                .map_err(|e| e.to_string())
        };
        let moto = free_port()?;
        let mut child = Command::new(tools.join("py/bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &moto.to_string()])
            .stdout(log("moto.log")?)
            .stderr(log("moto.err")?)
            .spawn()
            .map_err(|e| format!("cannot start moto_server: {e}"))?;
        let ready = wait_for_port(moto, "moto_server", &mut child);
        services.children.push(child);
        ready?;
        let lambda = free_port()?;
        let mut child = Command::new(tools.join("py/bin/cargo-lambda"))
            .args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "--invoke-address",
                "127.0.0.1",
            ])
            .args(["--invoke-port", &lambda.to_string(), "--manifest-path"])
            .arg(root().join("host/Cargo.toml"))
            .stdout(log("cargo-lambda.log")?)
            .stderr(log("cargo-lambda.err")?)
            .spawn()
            .map_err(|e| format!("cannot start cargo lambda watch: {e}"))?;
        let ready = wait_for_port(lambda, "cargo lambda watch", &mut child);
        services.children.push(child);
        ready?;
        let (postgres, data) = start_postgres(&mut services, &log)?;
        eprintln!(
            "test services: moto on 127.0.0.1:{moto}, Lambda emulator on 127.0.0.1:{lambda}, \
             PostgreSQL on 127.0.0.1:{postgres}"
        );
        services.dirs.push(data);
        services.env = vec![
            (
                "JOBHOST_TEST_POSTGRES".into(),
                format!("postgres://jobhost@127.0.0.1:{postgres}/postgres"),
            ),
            (
                "JOBHOST_TEST_SQS_ENDPOINT".into(),
                format!("http://127.0.0.1:{moto}"),
            ),
            (
                "JOBHOST_TEST_LAMBDA".into(),
                format!("http://127.0.0.1:{lambda}"),
            ),
        ];
        Ok(services)
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        for child in &mut self.children {
            // SIGINT first: PostgreSQL's fast shutdown stops its backends too.
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            for _ in 0..50 {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
