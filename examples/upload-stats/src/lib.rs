//! `upload-stats`: started by an S3 upload (a `[[trigger]]` with `presign = true`), reads the
//! object through the presigned URL in its payload, with no AWS credentials of its own, and
//! reports its size, line count and SHA-256. A URL that has expired or is refused (4xx) is a
//! permanent failure; a server error or a dropped connection is retried.

use jobhost_guest::http::HttpError;
use jobhost_guest::{Handler, Job, JobError, export_handler};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The payload an S3 trigger makes (other fields it adds are ignored).
#[derive(Deserialize, schemars::JsonSchema)]
pub struct Upload {
    /// The bucket.
    pub bucket: String,
    /// The object's key, decoded.
    pub key: String,
    /// The presigned GET URL of the object.
    #[schemars(length(min = 1))]
    pub url: String,
    /// The object's size, as S3 announced it.
    #[serde(default)]
    pub size: Option<u64>,
}

/// What the object holds.
#[derive(Serialize)]
pub struct Stats {
    /// `s3://bucket/key`.
    pub object: String,
    /// Bytes read.
    pub bytes: usize,
    /// Lines (newline characters, plus a last line without one).
    pub lines: usize,
    /// Hex SHA-256 of the content.
    pub sha256: String,
}

struct UploadStats;

impl Handler for UploadStats {
    type Payload = Upload;
    type Output = Stats;
    const NAMES: &'static [&'static str] = &["upload-stats"];

    fn handle(job: Job<Upload>) -> Result<Stats, JobError> {
        let upload = job.payload;
        let response = match jobhost_guest::http::request("GET", &upload.url, &[], &[]) {
            Ok(response) => response,
            Err(HttpError::Failed(e)) => return Err(JobError::transient(format!("reading the object failed: {e}"))),
            Err(other) => return Err(JobError::permanent(other)),
        };
        match response.status {
            200 => {}
            500..=599 => return Err(JobError::transient(format!("S3 answered {}", response.status))),
            status => return Err(JobError::permanent(format!("S3 refused the URL with {status} (expired?)"))),
        }
        let body = response.body;
        if let Some(size) = upload.size
            && size != body.len() as u64
        {
            jobhost_guest::log::warn(&format!("announced {size} bytes, read {}", body.len()));
        }
        let newlines = body.iter().filter(|b| **b == b'\n').count();
        let lines = newlines + usize::from(body.last().is_some_and(|b| *b != b'\n'));
        Ok(Stats {
            object: format!("s3://{}/{}", upload.bucket, upload.key),
            bytes: body.len(),
            lines,
            sha256: hex::encode(Sha256::digest(&body)),
        })
    }
}

export_handler!(UploadStats);
