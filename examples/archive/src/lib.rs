//! `archive`: packs files from the preopened `/in` folder into a tar archive in the
//! preopened `/out` folder. The manifest grants `/in` read-only and `/out` read-write; the
//! handler can reach nothing else (a name with `..` or a symlink out of `/in` is refused
//! by the host, and the handler refuses names with a `/` before trying).

use jobhost_guest::{Handler, Job, JobError, export_handler};
use serde::{Deserialize, Serialize};

/// The job's payload.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Archive {
    /// File names in `/in`.
    #[schemars(length(min = 1, max = 1000))]
    pub files: Vec<String>,
    /// The archive's name in `/out` (`.tar` is appended).
    #[schemars(length(min = 1, max = 200))]
    pub name: String,
}

/// The job's output.
#[derive(Serialize)]
pub struct Packed {
    /// The archive's path as the handler sees it.
    pub archive: String,
    /// Files packed.
    pub files: usize,
    /// Bytes of file content packed.
    pub bytes: u64,
}

fn plain_name(name: &str) -> Result<&str, JobError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(JobError::permanent(format!("{name:?} is not a plain file name")));
    }
    Ok(name)
}

struct ArchiveHandler;

impl Handler for ArchiveHandler {
    type Payload = Archive;
    type Output = Packed;
    const NAMES: &'static [&'static str] = &["archive"];

    fn handle(job: Job<Archive>) -> Result<Packed, JobError> {
        let archive = format!("/out/{}.tar", plain_name(&job.payload.name)?);
        let file = std::fs::File::create(&archive).map_err(|e| JobError::permanent(format!("cannot create {archive}: {e}")))?;
        let mut builder = tar::Builder::new(file);
        let mut bytes = 0;
        for (index, name) in job.payload.files.iter().enumerate() {
            let path = format!("/in/{}", plain_name(name)?);
            let data = std::fs::read(&path).map_err(|e| JobError::permanent(format!("cannot read {path}: {e}")))?;
            bytes += data.len() as u64;
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, data.as_slice()).map_err(|e| JobError::permanent(format!("packing {name}: {e}")))?;
            jobhost_guest::progress(index as u64 + 1, job.payload.files.len() as u64, None);
        }
        builder.into_inner().map_err(|e| JobError::permanent(format!("finishing {archive}: {e}")))?;
        Ok(Packed { archive, files: job.payload.files.len(), bytes })
    }
}

export_handler!(ArchiveHandler);
