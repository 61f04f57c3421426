//! Stands in for the two CLIs the C handlers' `build.sh` calls, with the same library crates
//! they are made of (wit-bindgen-c 0.57.1, wit-component 0.247), so that `cargo xtask`
//! compiles a few small crates instead of installing two large CLIs. Installed by the
//! xtask as `wit-bindgen` and `wasm-tools` in its tools folder, it answers exactly these:
//!
//! - `wit-bindgen c WIT_DIR --world WORLD --out-dir DIR`
//! - `wasm-tools component new CORE.wasm --adapt NAME=ADAPTER.wasm -o OUT.wasm`
//! - `wasm-tools validate FILE.wasm`
//!
//! and refuses anything else by name, so a script that needs more is told so at once.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> anyhow::Result<()> {
    // Called by the name it is installed under (`wit-bindgen`, `wasm-tools`), or with that
    // name as its first argument.
    let invoked = args.first().map(|a| program_name(a)).unwrap_or_default();
    let (tool, rest) = match invoked.as_str() {
        "wit-bindgen" | "wasm-tools" => (invoked.as_str(), &args[1..]),
        _ => match args.get(1) {
            Some(tool) => (tool.as_str(), &args[2..]),
            None => bail!("usage: component-tools wit-bindgen|wasm-tools ARGS"),
        },
    };
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    match (tool, rest.as_slice()) {
        ("wit-bindgen", ["c", wit, options @ ..]) => {
            let world = flag(options, "--world")?;
            let out = flag(options, "--out-dir")?;
            bindgen_c(Path::new(wit), world, Path::new(out))
        }
        ("wasm-tools", ["component", "new", core, options @ ..]) => {
            let adapt = flag(options, "--adapt")?;
            let out = flag(options, "-o")?;
            let (name, adapter) = adapt.split_once('=').context("--adapt takes NAME=FILE")?;
            component_new(Path::new(core), name, Path::new(adapter), Path::new(out))
        }
        ("wasm-tools", ["validate", file]) => validate(Path::new(file)),
        _ => bail!(
            "component-tools answers only `wit-bindgen c`, `wasm-tools component new` and \
             `wasm-tools validate`; install the real CLIs for `{tool} {}`",
            rest.join(" ")
        ),
    }
}

fn program_name(arg: &str) -> String {
    Path::new(arg)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The value after `name` in `options`.
fn flag<'a>(options: &[&'a str], name: &str) -> anyhow::Result<&'a str> {
    let at = options
        .iter()
        .position(|o| *o == name)
        .with_context(|| format!("{name} is required"))?;
    options
        .get(at + 1)
        .copied()
        .with_context(|| format!("{name} needs a value"))
}

fn bindgen_c(wit: &Path, world: &str, out: &Path) -> anyhow::Result<()> {
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve
        .push_path(wit)
        .with_context(|| format!("reading {}", wit.display()))?;
    let world = resolve.select_world(&[package], Some(world))?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for (name, contents) in files.iter() {
        let path: PathBuf = out.join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("Generating {}", path.display());
    }
    Ok(())
}

fn component_new(core: &Path, name: &str, adapter: &Path, out: &Path) -> anyhow::Result<()> {
    let module = std::fs::read(core).with_context(|| format!("reading {}", core.display()))?;
    let adapter =
        std::fs::read(adapter).with_context(|| format!("reading {}", adapter.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&module)?
        .adapter(name, &adapter)?
        .validate(true)
        .encode()?;
    std::fs::write(out, component).with_context(|| format!("writing {}", out.display()))
}

fn validate(file: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(&bytes)
        .with_context(|| format!("{} is not valid", file.display()))?;
    Ok(())
}
