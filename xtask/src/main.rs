//! `cargo xtask <task>`: the project's tasks, runnable on a fresh machine.
//!
//! - `examples`: install the wasm32-wasip2 target if missing and build every example
//!   handler into `examples/handlers/` (with its sidecars).
//! - `demo`: build the examples and run a few jobs through them with `jobhost exec`.
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
        for ext in ["toml", "schema.json"] {
            let sidecar = examples.join(folder).join(format!("{folder}.{ext}"));
            if sidecar.is_file() {
                copy(&sidecar, &out.join(format!("{folder}.{ext}")))?;
            }
        }
    }
    eprintln!(
        "built {} handlers into {}",
        RUST_EXAMPLES.len(),
        out.display()
    );
    Ok(out)
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
    let jobs = [
        (
            "report",
            r#"{"csv": "city,sales,units\nOslo,120.5,3\nLima,80,2\nOslo,10,1\n", "progress_every": 1}"#,
        ),
        ("fan-out", r#"{"job": "report", "items": ["a", "b", "c"]}"#),
        (
            "flaky-api",
            r#"{"url": "https://example.invalid/orders", "fail_until_attempt": 2}"#,
        ),
        ("thumbnail", r#"{"image": "bm90IGFuIGltYWdl", "size": 32}"#),
    ];
    for (name, payload) in jobs {
        eprintln!("\n== jobhost exec {name} {payload}");
        // A job that is not done exits 1: that is part of the demo, not a failure.
        let status = Command::new(&jobhost)
            .arg("exec")
            .arg("--plugins")
            .arg(&handlers)
            .args([name, payload])
            .status()
            .map_err(|e| e.to_string())?;
        eprintln!("(exit code {})", status.code().unwrap_or(-1));
    }
    Ok(())
}

fn test() -> Result {
    build_examples()?;
    run(cargo().args(["build", "-p", "jobhost", "--bins"]))?;
    run(cargo().args(["test", "--workspace"]))?;
    Ok(())
}
