//! `cargo xtask <task>`: the project's tasks, runnable on a fresh machine.
//!
//! - `examples`: install the wasm32-wasip2 target if missing and build every example
//!   handler into `examples/handlers/` (with its sidecars).
//! - `demo`: build the examples and the host, enqueue jobs into a fresh embedded queue
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

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
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
    build_js_example(&examples.join("notify-js"), &out)?;
    // The archive example's granted folders (relative to the plugins folder).
    for dir in ["archive-in", "archive-out"] {
        std::fs::create_dir_all(out.join(dir)).map_err(|e| e.to_string())?;
    }
    eprintln!(
        "built {} handlers into {}",
        RUST_EXAMPLES.len(),
        out.display()
    );
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
    let fresh = modified(&wasm).is_some_and(|built| {
        [dir.join("notify.js"), root().join("wit/jobhost.wit")]
            .iter()
            .all(|src| modified(src).is_some_and(|m| m <= built))
    });
    if !fresh {
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

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn copy(from: &Path, to: &Path) -> Result {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("copy {} -> {}: {e}", from.display(), to.display()))
}

fn demo() -> Result {
    let handlers = build_examples()?;
    run(cargo().args(["build", "--release", "-p", "jobhost"]))?;
    let jobhost = target_root().join("release/jobhost");
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
    run(cargo().args(["build", "-p", "jobhost", "--bins"]))?;
    run(cargo().args(["test", "--workspace"]))?;
    Ok(())
}
