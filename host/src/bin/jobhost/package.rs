//! `jobhost package`: the Lambda layer (`bootstrap`) and the handlers folder with
//! ahead-of-time compiled artifacts for the target architecture, as zips.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::cli::{Arch, PackageArgs};
use anyhow::Context as _;
use jobhost::config::DEFAULT_CACHE_DIR_NAME;
use jobhost::engine::JobEngine;
use jobhost::plugin::ArtifactCache;

use jobhost::run::lambda::{lambda_engine_options, native_triple};

fn triple(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "x86_64-unknown-linux-gnu",
        Arch::Arm64 => "aarch64-unknown-linux-gnu",
    }
}

fn arch_name(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "x86_64",
        Arch::Arm64 => "arm64",
    }
}

pub fn run(args: PackageArgs) -> anyhow::Result<ExitCode> {
    let target = triple(args.arch);
    let bootstrap = match &args.bootstrap {
        Some(path) => path.clone(),
        None if target == native_triple() => std::env::current_exe()?,
        None => anyhow::bail!(
            "this jobhost is built for {}; give --bootstrap with a jobhost built for {target} \
             (e.g. `cargo lambda build --release --arm64 -p jobhost` or \
             `cargo build --release --target {target} -p jobhost`)",
            native_triple()
        ),
    };
    let size = std::fs::metadata(&bootstrap)
        .with_context(|| format!("cannot read {}", bootstrap.display()))?
        .len();
    if size > 200 << 20 {
        eprintln!(
            "warning: {} is {} MB; a layer is at most 250 MB unzipped: build the bootstrap \
             with `cargo build --profile bootstrap -p jobhost` (stripped)",
            bootstrap.display(),
            size >> 20
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let arch = arch_name(args.arch);

    anyhow::ensure!(
        target == native_triple() || cfg!(feature = "cross"),
        "this jobhost compiles handlers only for {}: to package for {target}, build it with \
         `--features cross` (e.g. `cargo build --profile bootstrap -p jobhost --features cross`)",
        native_triple()
    );
    // The handlers, compiled for the target by the engine settings the Lambda host uses.
    let engine = JobEngine::new(lambda_engine_options(target))?;
    let stage = tempfile::tempdir()?;
    let cache = ArtifactCache::new(stage.path().join(DEFAULT_CACHE_DIR_NAME));
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for wasm in jobhost::plugin::wasm_files(&args.plugins)? {
        let bytes = std::fs::read(&wasm)?;
        cache
            .precompile(engine.engine(), &bytes)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("cannot compile {}", wasm.display()))?;
        let stem = wasm
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        files.push((format!("handlers/{stem}.wasm"), wasm.clone()));
        for sidecar in ["toml", "schema.json", "env"] {
            let path = args.plugins.join(format!("{stem}.{sidecar}"));
            if path.is_file() {
                files.push((format!("handlers/{stem}.{sidecar}"), path));
            }
        }
    }
    for artifact in std::fs::read_dir(stage.path().join(DEFAULT_CACHE_DIR_NAME))? {
        let artifact = artifact?.path();
        if artifact.is_file() {
            let name = artifact
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.push((
                format!("handlers/{DEFAULT_CACHE_DIR_NAME}/{name}"),
                artifact,
            ));
        }
    }
    let handlers_zip = args.out.join(format!("handlers-{arch}.zip"));
    write_zip(&handlers_zip, &files, &[])?;
    let layer_zip = args.out.join(format!("jobhost-layer-{arch}.zip"));
    write_zip(&layer_zip, &[], &[("bootstrap", bootstrap.as_path())])?;
    let handlers = files.iter().filter(|(n, _)| n.ends_with(".wasm")).count();
    println!(
        "{} ({handlers} handlers, compiled for {target})",
        handlers_zip.display()
    );
    println!("{} (bootstrap)", layer_zip.display());
    Ok(ExitCode::SUCCESS)
}

/// Writes a zip of `files` (mode 0644) and `executables` (mode 0755).
fn write_zip(
    path: &Path,
    files: &[(String, PathBuf)],
    executables: &[(&str, &Path)],
) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(file));
    let options = |mode: u32| {
        zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(mode)
            .large_file(true)
    };
    let entries = files
        .iter()
        .map(|(name, src)| (name.as_str(), src.as_path(), 0o644))
        .chain(executables.iter().map(|(name, src)| (*name, *src, 0o755)));
    for (name, src, mode) in entries {
        let bytes = std::fs::read(src).with_context(|| format!("cannot read {}", src.display()))?;
        zip.start_file(name, options(mode))?;
        zip.write_all(&bytes)?;
    }
    zip.finish()?.flush()?;
    Ok(())
}
