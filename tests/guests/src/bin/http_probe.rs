//! Makes the HTTP requests it is given and reports what happened to each.
use jobhost_guest::http::HttpError;
use jobhost_guest::{Handler, Job, JobError, export_handler};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, schemars::JsonSchema)]
struct Call {
    method: String,
    url: String,
    #[serde(default)]
    body: String,
}

#[derive(Serialize)]
struct Answer {
    status: Option<u16>,
    body_len: usize,
    body: String,
    error: Option<String>,
}

struct HttpProbe;

impl Handler for HttpProbe {
    type Payload = Vec<Call>;
    type Output = Vec<Answer>;
    const NAMES: &'static [&'static str] = &["http-probe"];

    fn handle(job: Job<Vec<Call>>) -> Result<Vec<Answer>, JobError> {
        Ok(job
            .payload
            .iter()
            .map(|call| match jobhost_guest::http::request(&call.method, &call.url, &[], call.body.as_bytes()) {
                Ok(response) => Answer {
                    status: Some(response.status),
                    body_len: response.body.len(),
                    body: String::from_utf8_lossy(&response.body[..response.body.len().min(100)]).into_owned(),
                    error: None,
                },
                Err(error) => Answer {
                    status: None,
                    body_len: 0,
                    body: String::new(),
                    error: Some(match error {
                        HttpError::Denied(m) => format!("denied: {m}"),
                        other => other.to_string(),
                    }),
                },
            })
            .collect())
    }
}

export_handler!(HttpProbe);

fn main() {}
