//! `jobhost new NAME --lang rust|js|python|c`: a handler project that builds and passes
//! `jobhost test` as generated.
//!
//! Every project has the WIT contract (`wit/jobhost.wit`), a `build.sh` that writes
//! `NAME.wasm` beside it, a `NAME.cases.json`, a README and a `.gitignore`; the project
//! folder is itself a handlers folder, so `jobhost test .` runs its cases.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::ValueEnum;

/// The languages `jobhost new` writes a project for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Language {
    /// Rust with wit-bindgen, built by cargo for wasm32-wasip2.
    Rust,
    /// JavaScript, built by componentize-js.
    Js,
    /// Python, built by componentize-py.
    Python,
    /// C with wasi-libc, built by clang, wit-bindgen c and wasm-tools.
    C,
}

const WIT: &str = include_str!("../../../../wit/jobhost.wit");
const README: &str = include_str!("../../../templates/common.README.md");
const CASES: &str = include_str!("../../../templates/common.cases.json");

/// One file of a project: its path (with `{{name}}` placeholders) and its template.
type Template = (&'static str, &'static str);

impl Language {
    fn title(self) -> &'static str {
        match self {
            Language::Rust => "Rust",
            Language::Js => "JavaScript",
            Language::Python => "Python",
            Language::C => "C",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Language::Rust => "rust",
            Language::Js => "js",
            Language::Python => "python",
            Language::C => "c",
        }
    }

    fn templates(self) -> &'static [Template] {
        match self {
            Language::Rust => &[
                (
                    "Cargo.toml",
                    include_str!("../../../templates/rust/Cargo.toml"),
                ),
                ("src/lib.rs", include_str!("../../../templates/rust/lib.rs")),
                ("build.sh", include_str!("../../../templates/rust/build.sh")),
                (
                    ".gitignore",
                    include_str!("../../../templates/rust/gitignore"),
                ),
            ],
            Language::Js => &[
                (
                    "package.json",
                    include_str!("../../../templates/js/package.json"),
                ),
                (
                    "{{name}}.js",
                    include_str!("../../../templates/js/handler.js"),
                ),
                ("build.sh", include_str!("../../../templates/js/build.sh")),
                (
                    ".gitignore",
                    include_str!("../../../templates/js/gitignore"),
                ),
            ],
            Language::Python => &[
                ("app.py", include_str!("../../../templates/python/app.py")),
                (
                    "requirements.txt",
                    include_str!("../../../templates/python/requirements.txt"),
                ),
                (
                    "build.sh",
                    include_str!("../../../templates/python/build.sh"),
                ),
                (
                    ".gitignore",
                    include_str!("../../../templates/python/gitignore"),
                ),
            ],
            Language::C => &[
                ("{{name}}.c", include_str!("../../../templates/c/handler.c")),
                ("build.sh", include_str!("../../../templates/c/build.sh")),
                (".gitignore", include_str!("../../../templates/c/gitignore")),
            ],
        }
    }

    fn build_notes(self) -> &'static str {
        match self {
            Language::Rust => {
                "- Needs the Rust toolchain (rustup); `build.sh` adds the `wasm32-wasip2` target \
                 if it is missing. Bindings come from `wit-bindgen`'s `generate!` over `wit/`."
            }
            Language::Js => {
                "- Needs Node.js and npm; `build.sh` installs componentize-js 0.23.0 (pinned in \
                 `package.json`) on the first build. WASI features the host does not grant are \
                 left out (`-d http fetch-event`). A failure is thrown as \
                 `{tag: \"permanent\", val: \"why\"}`."
            }
            Language::Python => {
                "- Needs Python 3.10 or later; `build.sh` uses `componentize-py` from `PATH`, or \
                 makes `.venv` with the version pinned in `requirements.txt`. The component is \
                 about 18 MB and takes seconds to compile: the host compiles it once and keeps \
                 the artifact in `.jobhost-cache/`."
            }
            Language::C => {
                "- Needs Debian's `clang lld wasi-libc libclang-rt-dev-wasm32 libjsmn-dev`, and \
                 `wit-bindgen` and `wasm-tools` on `PATH` (`cargo install --locked \
                 wit-bindgen-cli@0.57.1 wasm-tools@1.263.0`). \
                 `adapter/wasi_snapshot_preview1.reactor.wasm` is the WASI preview-1 adapter (for \
                 wasi-libc) of the host's wasmtime version, written by `jobhost new`."
            }
        }
    }
}

/// Job names a project can have: also a crate, package and file name in every language.
fn check_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.len() <= 64
        && !name.ends_with('-');
    if !valid {
        bail!(
            "`{name}` is not a usable handler name: use lowercase letters, digits and `-`, \
             starting with a letter (e.g. `send-email`)"
        );
    }
    Ok(())
}

fn fill(template: &str, name: &str, language: Language) -> String {
    template
        .replace("{{name}}", name)
        .replace("{{crate}}", &name.replace('-', "_"))
        .replace("{{language}}", language.title())
        .replace("{{lang}}", language.flag())
        .replace("{{build_notes}}", language.build_notes())
}

/// Writes a new `language` project for the handler `name` into `dir` (which must not exist
/// or be empty); returns the files written.
pub fn create(dir: &Path, name: &str, language: Language) -> anyhow::Result<Vec<PathBuf>> {
    check_name(name)?;
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!("{} exists and is not empty", dir.display());
    }
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("wit/jobhost.wit".into(), WIT.into()),
        (
            format!("{name}.cases.json"),
            fill(CASES, name, language).into(),
        ),
        ("README.md".into(), fill(README, name, language).into()),
    ];
    for (path, template) in language.templates() {
        files.push((
            fill(path, name, language),
            fill(template, name, language).into(),
        ));
    }
    if language == Language::C {
        files.push((
            "adapter/wasi_snapshot_preview1.reactor.wasm".into(),
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER
                .to_vec(),
        ));
    }
    let mut written = Vec::with_capacity(files.len());
    for (relative, contents) in files {
        let path = dir.join(&relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
        if relative == "build.sh" {
            make_executable(&path)?;
        }
        written.push(path);
    }
    Ok(written)
}

#[cfg(unix)]
fn make_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", path.display()))
}

#[cfg(not(unix))]
fn make_executable(_path: &Path) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_be_a_crate_or_file_are_refused() {
        for bad in ["", "Send", "9lives", "send_email", "a/b", "x-", "émail"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        for good in ["send-email", "resize2", "a"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        for language in [Language::Rust, Language::Js, Language::Python, Language::C] {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let files = create(&dir.path().join("p"), "send-email", language)
                .unwrap_or_else(|e| panic!("{e}"));
            for file in files {
                let Ok(text) = std::fs::read_to_string(&file) else {
                    continue;
                };
                assert!(
                    !text.contains("{{"),
                    "{} keeps a placeholder",
                    file.display()
                );
            }
        }
    }
}
