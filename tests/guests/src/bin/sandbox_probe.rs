//! Tries what a handler should not be able to do unless granted, and reports each result.
use jobhost_guest::{Handler, Job, JobError, export_handler};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Probe {
    Read(String),
    Write(String),
    List(String),
    Env(String),
    Connect(String),
}

#[derive(Serialize)]
struct Answer {
    ok: bool,
    value: String,
}

fn answer(result: std::io::Result<String>) -> Answer {
    match result {
        Ok(value) => Answer { ok: true, value },
        Err(e) => Answer { ok: false, value: e.to_string() },
    }
}

struct SandboxProbe;

impl Handler for SandboxProbe {
    type Payload = Vec<Probe>;
    type Output = Vec<Answer>;
    const NAMES: &'static [&'static str] = &["sandbox-probe"];

    fn handle(job: Job<Vec<Probe>>) -> Result<Vec<Answer>, JobError> {
        Ok(job
            .payload
            .into_iter()
            .map(|probe| match probe {
                Probe::Read(path) => answer(std::fs::read_to_string(path)),
                Probe::Write(path) => answer(std::fs::write(&path, b"written by the guest").map(|()| path)),
                Probe::List(path) => answer(std::fs::read_dir(path).map(|d| d.count().to_string())),
                Probe::Env(name) => answer(std::env::var(name).map_err(std::io::Error::other)),
                Probe::Connect(address) => answer(std::net::TcpStream::connect(address.as_str()).map(|_| address)),
            })
            .collect())
    }
}

export_handler!(SandboxProbe);

fn main() {}
