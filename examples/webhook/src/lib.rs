//! `webhook`: POSTs a signed JSON body to a URL the manifest allowlists. The signature is
//! `X-Jobhost-Signature: sha256=<hex HMAC-SHA256 of the body>` with the secret from the
//! granted `WEBHOOK_SECRET` variable. 2xx is done; 4xx is permanent (the receiver refused
//! it); 5xx, 429, timeouts and connection errors are transient (retried with backoff, or
//! after the receiver's `retry_after_ms` hint in a JSON reply).

use std::time::Duration;

use hmac::{Hmac, Mac as _};
use jobhost_guest::http::HttpError;
use jobhost_guest::{Handler, Job, JobError, export_handler};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The job's payload.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// Where to deliver (must be on the manifest's `[grants.http] allow` list).
    #[schemars(length(min = 1))]
    pub url: String,
    /// The event, delivered as `{"event": ..., "id": <job id>, "attempt": N}`.
    pub event: serde_json::Value,
}

/// The job's output.
#[derive(Serialize)]
pub struct Delivered {
    /// The receiver's status.
    pub status: u16,
    /// The attempt that got through.
    pub attempt: u32,
}

fn sign(secret: &[u8], body: &[u8]) -> Result<String, JobError> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|e| JobError::permanent(format!("bad secret: {e}")))?;
    mac.update(body);
    Ok(format!("sha256={}", hex::encode(mac.finalize().into_bytes())))
}

struct WebhookHandler;

impl Handler for WebhookHandler {
    type Payload = Webhook;
    type Output = Delivered;
    const NAMES: &'static [&'static str] = &["webhook"];

    fn handle(job: Job<Webhook>) -> Result<Delivered, JobError> {
        let secret = std::env::var("WEBHOOK_SECRET")
            .map_err(|_| JobError::permanent("WEBHOOK_SECRET is not granted: add it to [grants] env"))?;
        let body = serde_json::to_vec(&serde_json::json!({"event": job.payload.event, "id": job.id, "attempt": job.attempt}))
            .map_err(JobError::permanent)?;
        let signature = sign(secret.as_bytes(), &body)?;
        let headers = [("content-type", "application/json"), ("x-jobhost-signature", signature.as_str())];
        let response = match jobhost_guest::http::request("POST", &job.payload.url, &headers, &body) {
            Ok(response) => response,
            Err(HttpError::Failed(e)) => return Err(JobError::transient(format!("delivery failed: {e}"))),
            Err(other) => return Err(JobError::permanent(other)),
        };
        let status = response.status;
        jobhost_guest::log::info(&format!("{} answered {status}", job.payload.url));
        match status {
            200..=299 => Ok(Delivered { status, attempt: job.attempt }),
            429 | 500..=599 => {
                let hint = serde_json::from_slice::<serde_json::Value>(&response.body)
                    .ok()
                    .and_then(|v| v["retry_after_ms"].as_u64());
                let error = JobError::transient(format!("receiver answered {status}"));
                Err(match hint {
                    Some(ms) => error.retry_after(Duration::from_millis(ms)),
                    None => error,
                })
            }
            _ => Err(JobError::permanent(format!("receiver refused the event with {status}"))),
        }
    }
}

export_handler!(WebhookHandler);
