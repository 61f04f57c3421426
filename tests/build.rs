//! Builds the fixture guests in `guests/` for wasm32-wasip2 and exposes their paths as
//! constants (`fixtures::ECHO`, ...), plus a `foreach_fixture!` macro that the tests use to
//! check that every fixture has a test of its own name.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let guests = manifest_dir.join("guests");
    for watched in [
        "guests/src",
        "guests/Cargo.toml",
        "../guest-sdk/src",
        "../wit",
    ] {
        println!("cargo:rerun-if-changed={watched}");
    }
    ensure_target();
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let target_root = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| manifest_dir.join("../target"), PathBuf::from);
    let target_dir = target_root.join("wasm-guests");
    build(&guests, &target_dir);
    let names = fixture_names(&guests.join("src/bin"));
    let out_dir = target_dir.join(TARGET).join("release");
    write_fixtures(&names, &out_dir);
}

fn ensure_target() {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == TARGET)
        })
        .unwrap_or(false);
    if !installed {
        let status = Command::new("rustup")
            .args(["target", "add", TARGET])
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "`rustup target add {TARGET}` failed"
        );
    }
}

fn build(guests: &Path, target_dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(guests.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    // The outer build's flags are for the host target, not for the guests.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        command.env_remove(var);
    }
    let status = command.status().expect("cargo runs");
    assert!(status.success(), "building the fixture guests failed");
}

fn fixture_names(bin_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(bin_dir)
        .expect("guests/src/bin exists")
        .filter_map(Result::ok)
        .filter_map(|e| {
            e.path()
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    names
}

fn write_fixtures(names: &[String], wasm_dir: &Path) {
    let mut code = String::new();
    for name in names {
        let path = wasm_dir.join(format!("{name}.wasm"));
        assert!(
            path.is_file(),
            "fixture {name} was not built at {}",
            path.display()
        );
        code.push_str(&format!(
            "/// The `{name}` fixture component.\npub const {}: &str = {:?};\n",
            name.to_uppercase(),
            path.display().to_string()
        ));
    }
    code.push_str("/// Calls `$mac!(name)` for every fixture.\n#[macro_export]\nmacro_rules! foreach_fixture {\n    ($mac:ident) => {\n");
    for name in names {
        code.push_str(&format!("        $mac!({name});\n"));
    }
    code.push_str("    };\n}\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("fixtures.rs");
    std::fs::write(out, code).expect("OUT_DIR is writable");
}
