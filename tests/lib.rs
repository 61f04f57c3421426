//! Shared helpers for jobhost's integration tests and benchmarks: the fixture guests, and
//! a temporary plugins folder built from them.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use jobhost::{Delivery, Dispatcher, EngineOptions, HostConfig, Report};
use serde_json::Value;

/// Paths of the fixture components, built by `build.rs`.
pub mod fixtures {
    include!(concat!(env!("OUT_DIR"), "/fixtures.rs"));
}

/// A temporary plugins folder.
pub struct Handlers {
    dir: tempfile::TempDir,
}

impl Handlers {
    /// An empty folder.
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            dir: tempfile::tempdir()?,
        })
    }

    /// The folder's path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Copies a fixture into the folder as `NAME.wasm`.
    pub fn add(&self, fixture: &str, name: &str) -> anyhow::Result<&Self> {
        std::fs::copy(fixture, self.file(name, "wasm"))
            .with_context(|| format!("copying {fixture}"))?;
        Ok(self)
    }

    /// Writes a sidecar `NAME.EXT` next to the handler.
    pub fn sidecar(&self, name: &str, ext: &str, text: &str) -> anyhow::Result<&Self> {
        std::fs::write(self.file(name, ext), text)?;
        Ok(self)
    }

    /// The path of `NAME.EXT` in the folder.
    pub fn file(&self, name: &str, ext: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.{ext}"))
    }

    /// Host configuration for this folder, with a small pool and a cache shared by the
    /// tests (keyed by content, so sharing is safe).
    pub fn config(&self) -> HostConfig {
        let mut config = HostConfig::new(self.path());
        config.cache_dir = Some(shared_cache_dir());
        config.engine = EngineOptions {
            pool_instances: 16,
            ..EngineOptions::default()
        };
        config
    }

    /// Starts a dispatcher over the folder.
    pub fn dispatcher(&self) -> anyhow::Result<Dispatcher> {
        Ok(self.config().start()?)
    }
}

/// The `jobhost` binary next to the running test executable (built by `cargo xtask test`),
/// with the shared artifact cache and quiet logs.
pub fn jobhost_command() -> anyhow::Result<std::process::Command> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from);
    let bin = dir.map(|d| d.join("jobhost")).filter(|p| p.is_file());
    let bin = bin.ok_or_else(|| {
        anyhow::anyhow!("the jobhost binary is not built: run `cargo xtask test`")
    })?;
    let mut command = std::process::Command::new(bin);
    command
        .env("JOBHOST_CACHE_DIR", shared_cache_dir())
        .env("JOBHOST_LOG", "warn");
    Ok(command)
}

/// The artifact cache the tests share.
pub fn shared_cache_dir() -> PathBuf {
    let target = option_env!("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("test-artifact-cache")
}

/// Dispatches `{"job": name, "payload": payload}` as attempt `attempt`.
pub fn run_job(dispatcher: &Dispatcher, name: &str, payload: Value, attempt: u32) -> Report {
    let body = serde_json::json!({"job": name, "payload": payload}).to_string();
    let delivery = Delivery {
        attempt: Some(attempt),
        ..Delivery::default()
    };
    dispatcher.dispatch(body.as_bytes(), &delivery)
}

/// The load errors of a dispatcher's plugins folder, as text.
pub fn load_errors(dispatcher: &Dispatcher) -> Vec<String> {
    dispatcher
        .plugins()
        .errors()
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Runs a runner with `--drain` semantics over any queue until nothing is due or running.
pub fn drain_queue<Q: jobhost::queue::Queue>(
    queue: std::sync::Arc<Q>,
    dispatcher: std::sync::Arc<Dispatcher>,
) -> anyhow::Result<jobhost::runner::RunSummary> {
    let mut options = jobhost::runner::RunOptions::new(2, std::time::Duration::from_secs(30));
    options.drain = true;
    let runtime = tokio::runtime::Runtime::new()?;
    Ok(runtime.block_on(async {
        let clock = std::sync::Arc::new(jobhost::clock::SystemClock);
        let runner = jobhost::runner::Runner::new(queue, dispatcher, clock, options);
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        runner.run(stopped).await
    }))
}

/// [`drain_queue`] over an SQLite queue, on that queue's clock.
pub fn drain(
    queue: &jobhost::queue::sqlite::SqliteQueue,
    dispatcher: std::sync::Arc<Dispatcher>,
) -> anyhow::Result<jobhost::runner::RunSummary> {
    drain_queue(std::sync::Arc::new(queue.clone()), dispatcher)
}

/// A request the test HTTP server received.
#[derive(Clone, Debug)]
pub struct Received {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// A real HTTP/1.1 server on 127.0.0.1 for guests to call. Paths: `/ok` 200 `hello`,
/// `/big` 200 with 2 MiB, `/fail` 500 with a retry hint, `/missing` 404, `/slow` 200
/// after 3 s. Every request is recorded. It stops when dropped.
pub struct TestServer {
    /// Its port.
    pub port: u16,
    received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl TestServer {
    /// Starts the server on a free loopback port.
    pub fn start() -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (log, done) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let log = log.clone();
                        std::thread::spawn(move || serve_one(stream, &log));
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        });
        Ok(Self {
            port,
            received,
            stop,
        })
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// What it has received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn serve_one(stream: std::net::TcpStream, log: &std::sync::Mutex<Vec<Received>>) {
    use std::io::{BufRead as _, Read as _, Write as _};
    let _ = stream.set_nonblocking(false);
    let mut reader = std::io::BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    if let Ok(mut log) = log.lock() {
        log.push(Received {
            method,
            path: path.clone(),
            headers,
            body,
        });
    }
    let (status, reply): (&str, Vec<u8>) = match path.as_str() {
        "/ok" => ("200 OK", b"hello".to_vec()),
        "/big" => ("200 OK", vec![b'b'; 2 << 20]),
        "/fail" => (
            "500 Internal Server Error",
            br#"{"retry_after_ms": 1234}"#.to_vec(),
        ),
        "/missing" => ("404 Not Found", b"no".to_vec()),
        "/slow" => {
            std::thread::sleep(std::time::Duration::from_secs(3));
            ("200 OK", b"late".to_vec())
        }
        _ => ("404 Not Found", Vec::new()),
    };
    let mut stream = stream;
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reply.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&reply);
}
