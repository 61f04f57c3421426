//! A handler's manifest: the optional `NAME.toml` sidecar next to `NAME.wasm`.
//!
//! ```toml
//! [limits]
//! fuel = 1_000_000_000
//! timeout-ms = 5_000
//!
//! [retry]
//! max-attempts = 3
//! ```
//!
//! Unknown keys are errors, so a typo never silently falls back to a default.
//! Main type: [`Manifest`].

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::job::RetryPolicy;
use crate::sandbox::Limits;

/// Everything a handler's manifest may configure.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Manifest {
    /// Resource limits per job.
    pub limits: Limits,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// The most jobs of this handler running at once in one host (default: no limit
    /// beyond the host's `--concurrency`).
    pub concurrency: Option<u32>,
    /// Periodic jobs: `[[schedule]]` entries.
    pub schedule: Vec<Schedule>,
    /// AWS events that start this handler: `[[trigger]]` entries ([`crate::trigger`]).
    pub trigger: Vec<crate::trigger::Trigger>,
    /// What the handler may reach beyond its own memory: nothing unless granted here.
    pub grants: Grants,
}

/// Capabilities granted to a handler. Without a `[grants]` table a handler sees no files
/// and no environment variables.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Grants {
    /// Names of host environment variables the handler may read (values are taken when
    /// the handler loads). Every other variable is invisible.
    pub env: Vec<String>,
    /// A `KEY=VALUE` file (relative to the plugins folder) that supplies values for the
    /// names in `env` before the host environment does: a place for secrets.
    pub env_file: Option<std::path::PathBuf>,
    /// Directories preopened for the handler; paths outside them, `..` escapes and
    /// symlinks leading out are refused.
    pub dirs: Vec<DirGrant>,
    /// Outbound HTTP to an allowlist of hosts.
    pub http: Option<crate::sandbox::HttpGrant>,
}

/// One preopened directory.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DirGrant {
    /// The directory on the host; a relative path is relative to the plugins folder.
    pub host: std::path::PathBuf,
    /// Where the handler sees it, e.g. `/in`.
    pub guest: String,
    /// Whether the handler may create, write and delete files in it.
    #[serde(default)]
    pub writable: bool,
}

/// A periodic job: enqueued once per tick of a cron expression.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Schedule {
    /// A cron expression: five fields (minute granularity) or six (with seconds first),
    /// evaluated in UTC; `@hourly` style aliases work too.
    pub cron: String,
    /// The job name (default: the handler's first name).
    #[serde(default)]
    pub job: Option<String>,
    /// The payload of every tick's job.
    #[serde(default = "empty_object")]
    pub payload: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

impl Schedule {
    /// The parsed cron expression.
    pub fn cron(&self) -> Result<croner::Cron, String> {
        use std::str::FromStr as _;
        croner::Cron::from_str(&self.cron)
            .map_err(|e| format!("invalid cron expression {:?}: {e}", self.cron))
    }
}

/// A manifest that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The manifest's path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid manifest.
    #[error("invalid manifest {path}: {message}")]
    Parse {
        /// The manifest's path.
        path: String,
        /// What is wrong, from the TOML parser.
        message: String,
    },
}

impl Manifest {
    /// Parses manifest text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ManifestError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        manifest
            .validate()
            .map_err(|message| ManifestError::Parse {
                path: origin.to_string(),
                message,
            })?;
        Ok(manifest)
    }

    /// Reads the manifest at `path`, or the defaults when there is no such file.
    pub fn load_or_default(path: &Path) -> Result<Self, ManifestError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ManifestError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.retry.max_attempts == 0 {
            return Err("retry.max-attempts must be at least 1".into());
        }
        if self.limits.timeout_ms == 0 {
            return Err("limits.timeout-ms must be at least 1".into());
        }
        if self.concurrency == Some(0) {
            return Err("concurrency must be at least 1".into());
        }
        for schedule in &self.schedule {
            schedule.cron()?;
        }
        for trigger in &self.trigger {
            trigger.validate()?;
        }
        if let Some(bad) = self
            .grants
            .env
            .iter()
            .find(|n| n.is_empty() || n.contains('='))
        {
            return Err(format!("grants.env: {bad:?} is not a variable name"));
        }
        if let Some(http) = &self.grants.http {
            http.validate()?;
        }
        if let Some(bad) = self.grants.dirs.iter().find(|d| !d.guest.starts_with('/')) {
            return Err(format!(
                "grants.dirs: guest path {:?} must be absolute, e.g. \"/in\"",
                bad.guest
            ));
        }
        if !(self.retry.backoff_factor.is_finite() && self.retry.backoff_factor >= 1.0) {
            return Err("retry.backoff-factor must be a number >= 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_is_an_error_that_names_the_key() {
        let Err(err) = Manifest::parse("[limits]\nfuell = 3\n", "x.toml") else {
            panic!("a typo must be refused");
        };
        let text = err.to_string();
        assert!(text.contains("x.toml") && text.contains("fuell"), "{text}");
    }

    #[test]
    fn schedules_are_checked_at_load() -> Result<(), ManifestError> {
        let manifest = Manifest::parse(
            "[[schedule]]\ncron = \"*/5 * * * *\"\npayload = { a = 1 }\n",
            "x.toml",
        )?;
        assert_eq!(manifest.schedule[0].payload["a"], 1);
        assert!(Manifest::parse("[[schedule]]\ncron = \"every tuesday\"\n", "x.toml").is_err());
        Ok(())
    }

    #[test]
    fn partial_tables_keep_the_other_defaults() -> Result<(), ManifestError> {
        let manifest = Manifest::parse("[limits]\ntimeout-ms = 5\n", "x.toml")?;
        assert_eq!(manifest.limits.timeout_ms, 5);
        assert_eq!(manifest.limits.fuel, Limits::default().fuel);
        Ok(())
    }
}
