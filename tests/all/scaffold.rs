//! `jobhost new NAME --lang L`: the generated project builds with its own `build.sh` and
//! passes its own cases with `jobhost test`, in every language.

use std::path::PathBuf;
use std::process::Command;

use jobhost_tests::jobhost_command;

/// The tools folder `cargo xtask examples` fills (wit-bindgen, wasm-tools, componentize-py).
fn tools() -> anyhow::Result<PathBuf> {
    let dir = jobhost_tests::tools_dir();
    anyhow::ensure!(
        dir.join("bin/wit-bindgen").is_file() && dir.join("py/bin/componentize-py").is_file(),
        "the guest tools are not installed in {}: run `cargo xtask examples`",
        dir.display()
    );
    Ok(dir)
}

/// `jobhost new`, then `./build.sh`, then `jobhost test .`; returns the test's stdout.
fn generate_build_and_test(lang: &str) -> anyhow::Result<String> {
    let tools = tools()?;
    let work = tempfile::tempdir()?;
    let name = format!("greet-{lang}");
    let project = work.path().join(&name);
    let created = jobhost_command()?
        .args(["new", &name, "--lang", lang, "--dir"])
        .arg(&project)
        .output()?;
    anyhow::ensure!(
        created.status.success(),
        "jobhost new: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    for file in ["wit/jobhost.wit", "build.sh", "README.md", ".gitignore"] {
        assert!(project.join(file).is_file(), "{lang}: no {file}");
    }
    assert!(project.join(format!("{name}.cases.json")).is_file());

    let mut path = vec![tools.join("bin"), tools.join("py/bin")];
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    // A Rust project shares one target folder across runs (the wit-bindgen build).
    let target = jobhost_tests::shared_cache_dir().join("../scaffold-target");
    let build = Command::new("sh")
        .arg("build.sh")
        .current_dir(&project)
        .env("PATH", std::env::join_paths(path)?)
        .env("CARGO_TARGET_DIR", target)
        .output()?;
    anyhow::ensure!(
        build.status.success(),
        "{lang}: build.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );
    assert!(project.join(format!("{name}.wasm")).is_file());

    let test = jobhost_command()?.arg("test").arg(&project).output()?;
    let stdout = String::from_utf8(test.stdout)?;
    assert!(
        test.status.success(),
        "{lang}: {stdout}{}",
        String::from_utf8_lossy(&test.stderr)
    );
    Ok(stdout)
}

fn assert_generated_project_passes(lang: &str) -> anyhow::Result<()> {
    let stdout = generate_build_and_test(lang)?;
    assert_eq!(
        stdout.lines().last(),
        Some("3 passed, 0 failed"),
        "{lang}: {stdout}"
    );
    for case in [
        "greets by name",
        "refused by the schema",
        "permanent error from the handler",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("ok ") && l.contains(case)),
            "{lang}: `{case}` did not pass:\n{stdout}"
        );
    }
    Ok(())
}

#[test]
fn new_rust_project_builds_and_passes_its_cases() -> anyhow::Result<()> {
    assert_generated_project_passes("rust")
}

#[test]
fn new_js_project_builds_and_passes_its_cases() -> anyhow::Result<()> {
    assert_generated_project_passes("js")
}

#[test]
fn new_python_project_builds_and_passes_its_cases() -> anyhow::Result<()> {
    assert_generated_project_passes("python")
}

#[test]
fn new_c_project_builds_and_passes_its_cases() -> anyhow::Result<()> {
    assert_generated_project_passes("c")
}

#[test]
fn new_refuses_a_bad_name_and_a_folder_in_use() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let bad = jobhost_command()?
        .args(["new", "Send_Email", "--lang", "rust", "--dir"])
        .arg(work.path().join("x"))
        .output()?;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a usable handler name"));
    std::fs::write(work.path().join("keep.txt"), "mine")?;
    let busy = jobhost_command()?
        .args(["new", "greet", "--lang", "c", "--dir"])
        .arg(work.path())
        .output()?;
    assert!(!busy.status.success());
    assert!(String::from_utf8_lossy(&busy.stderr).contains("is not empty"));
    assert_eq!(
        std::fs::read_to_string(work.path().join("keep.txt"))?,
        "mine"
    );
    Ok(())
}
