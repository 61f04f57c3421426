//! Shared helpers for jobhost's integration tests and benchmarks: the fixture guests, and
//! a temporary plugins folder built from them.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use jobhost::config::HostConfig;
use jobhost::dispatch::{Delivery, Dispatcher};
use jobhost::engine::EngineOptions;
use jobhost::job::Report;
use serde_json::Value;

/// Paths of the fixture components, built by `build.rs`.
pub mod fixtures {
    include!(concat!(env!("OUT_DIR"), "/fixtures.rs"));
}

/// The tools folder `cargo xtask` installs into (`JOBHOST_TOOLS`, default
/// `~/.cache/jobhost/tools`): the Python venv with moto, boto3, cfn-lint.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("JOBHOST_TOOLS").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/jobhost/tools"),
        PathBuf::from,
    )
}

/// The PostgreSQL server `cargo xtask test` starts (`JOBHOST_TEST_POSTGRES`), or an error
/// that says how to get one.
pub fn postgres_url() -> anyhow::Result<String> {
    std::env::var("JOBHOST_TEST_POSTGRES").map_err(|_| {
        anyhow::anyhow!(
            "JOBHOST_TEST_POSTGRES is not set: run the tests with `cargo xtask test`, which \
             starts PostgreSQL on 127.0.0.1"
        )
    })
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
) -> anyhow::Result<jobhost::run::poller::RunSummary> {
    let mut options = jobhost::run::poller::RunOptions::new(2, std::time::Duration::from_secs(30));
    options.drain = true;
    let runtime = tokio::runtime::Runtime::new()?;
    Ok(runtime.block_on(async {
        let clock = std::sync::Arc::new(jobhost::clock::SystemClock);
        let runner = jobhost::run::poller::Runner::new(queue, dispatcher, clock, options);
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        runner.run(stopped).await
    }))
}

/// [`drain_queue`] over an SQLite queue, on that queue's clock.
pub fn drain(
    queue: &jobhost::queue::sqlite::SqliteQueue,
    dispatcher: std::sync::Arc<Dispatcher>,
) -> anyhow::Result<jobhost::run::poller::RunSummary> {
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
/// after 3 s, `/2018-06-01/runtime/init/error` 202 (a Lambda Runtime API's answer). Every request is recorded. It stops when dropped.
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
        // As the Lambda Runtime API answers an init error report.
        "/2018-06-01/runtime/init/error" => ("202 Accepted", br#"{"status": "OK"}"#.to_vec()),
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

/// SQS against the moto server that `cargo xtask test` starts (its endpoint in
/// `JOBHOST_TEST_SQS_ENDPOINT`), with dummy credentials and a fixed region.
pub mod sqs {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU32, Ordering};

    use aws_sdk_sqs::Client;
    use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};

    /// The dummy AWS environment every test process gets.
    pub const AWS_ENV: [(&str, &str); 5] = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_SESSION_TOKEN", "testing"),
    ];

    /// moto's endpoint, or an error that says how to get one.
    pub fn endpoint() -> anyhow::Result<String> {
        std::env::var("JOBHOST_TEST_SQS_ENDPOINT").map_err(|_| {
            anyhow::anyhow!(
                "JOBHOST_TEST_SQS_ENDPOINT is not set: run the tests with `cargo xtask test`, \
                 which starts moto_server on 127.0.0.1"
            )
        })
    }

    /// Sets the dummy AWS environment and the endpoint on a command.
    pub fn aws_env(command: &mut std::process::Command) -> anyhow::Result<()> {
        command.envs(AWS_ENV).env("AWS_ENDPOINT_URL", endpoint()?);
        Ok(())
    }

    /// A client for moto.
    pub async fn client() -> anyhow::Result<Client> {
        Ok(client_at(&endpoint()?))
    }

    /// A client for an SQS endpoint (moto, or a proxy in front of it).
    pub fn client_at(endpoint: &str) -> Client {
        let credentials =
            aws_sdk_sqs::config::Credentials::new("testing", "testing", None, None, "tests");
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .credentials_provider(credentials)
            .endpoint_url(endpoint)
            .build();
        Client::from_conf(config)
    }

    /// A queue and its dead-letter queue, with unique names.
    #[derive(Clone, Debug)]
    pub struct QueuePair {
        /// The queue's URL.
        pub url: String,
        /// The queue's ARN.
        pub arn: String,
        /// The dead-letter queue's URL.
        pub dlq_url: String,
    }

    static NEXT: AtomicU32 = AtomicU32::new(0);

    async fn create(
        client: &Client,
        name: &str,
        attrs: Vec<(QueueAttributeName, String)>,
    ) -> anyhow::Result<(String, String)> {
        let mut request = client.create_queue().queue_name(name);
        for (key, value) in attrs {
            request = request.attributes(key, value);
        }
        let url = request.send().await?.queue_url.unwrap_or_default();
        let arn = client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await?
            .attributes
            .unwrap_or_default()
            .remove(&QueueAttributeName::QueueArn)
            .unwrap_or_default();
        Ok((url, arn))
    }

    /// Creates `PREFIX-N` with visibility `visibility_s` and a dead-letter queue named in
    /// its RedrivePolicy (maxReceiveCount 100, so moto never moves messages itself).
    pub async fn queue_pair(
        client: &Client,
        prefix: &str,
        visibility_s: u32,
        fifo: bool,
    ) -> anyhow::Result<QueuePair> {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let suffix = if fifo { ".fifo" } else { "" };
        let base = format!("{prefix}-{}-{n}", std::process::id());
        let mut fifo_attrs = Vec::new();
        if fifo {
            fifo_attrs.push((QueueAttributeName::FifoQueue, "true".to_string()));
        }
        let (dlq_url, dlq_arn) =
            create(client, &format!("{base}-dlq{suffix}"), fifo_attrs.clone()).await?;
        let mut attrs = fifo_attrs;
        attrs.push((
            QueueAttributeName::VisibilityTimeout,
            visibility_s.to_string(),
        ));
        attrs.push((
            QueueAttributeName::RedrivePolicy,
            serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "100"})
                .to_string(),
        ));
        let (url, arn) = create(client, &format!("{base}{suffix}"), attrs).await?;
        Ok(QueuePair { url, arn, dlq_url })
    }

    /// One received message: body, message attributes (string values) and system attributes.
    #[derive(Clone, Debug)]
    pub struct Received {
        /// The message id.
        pub id: String,
        /// The receipt handle.
        pub receipt: String,
        /// The body.
        pub body: String,
        /// Message attributes, as strings.
        pub attributes: HashMap<String, String>,
        /// System attributes (ApproximateReceiveCount, ...).
        pub system: HashMap<String, String>,
    }

    /// Receives whatever is visible (several calls, short waits), without deleting it.
    pub async fn receive_all(client: &Client, url: &str) -> anyhow::Result<Vec<Received>> {
        let mut out = Vec::new();
        for _ in 0..20 {
            let batch = client
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .wait_time_seconds(0)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send()
                .await?
                .messages
                .unwrap_or_default();
            if batch.is_empty() {
                break;
            }
            for m in batch {
                out.push(Received {
                    id: m.message_id.unwrap_or_default(),
                    receipt: m.receipt_handle.unwrap_or_default(),
                    body: m.body.unwrap_or_default(),
                    attributes: m
                        .message_attributes
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.string_value.unwrap_or_default()))
                        .collect(),
                    system: m
                        .attributes
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k.as_str().to_string(), v))
                        .collect(),
                });
            }
        }
        Ok(out)
    }

    /// Approximate visible + in-flight + delayed counts of a queue.
    pub async fn counts(client: &Client, url: &str) -> anyhow::Result<(u64, u64, u64)> {
        let attrs = client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await?
            .attributes
            .unwrap_or_default();
        let get =
            |name: QueueAttributeName| attrs.get(&name).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok((
            get(QueueAttributeName::ApproximateNumberOfMessages),
            get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        ))
    }

    /// Sends raw bodies.
    pub async fn send_raw(
        client: &Client,
        url: &str,
        bodies: &[String],
    ) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::new();
        for body in bodies {
            let out = client
                .send_message()
                .queue_url(url)
                .message_body(body)
                .send()
                .await?;
            ids.push(out.message_id.unwrap_or_default());
        }
        Ok(ids)
    }

    /// An HTTP proxy in front of moto that counts the SQS calls passing through it, by
    /// operation (`GetQueueAttributes`, `SendMessageBatch`, ...). It runs on its own thread.
    pub struct CountingProxy {
        /// Its endpoint, for `AWS_ENDPOINT_URL`.
        pub endpoint: String,
        counts: std::sync::Arc<std::sync::Mutex<HashMap<String, usize>>>,
        _runtime: tokio::runtime::Runtime,
    }

    impl CountingProxy {
        /// A proxy to moto on a free port of 127.0.0.1.
        pub fn start() -> anyhow::Result<Self> {
            let upstream = endpoint()?.trim_start_matches("http://").to_string();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
            let endpoint = format!("http://{}", listener.local_addr()?);
            let counts = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
            let seen = counts.clone();
            runtime.spawn(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    let (upstream, seen) = (upstream.clone(), seen.clone());
                    tokio::spawn(async move {
                        let _ = relay(inbound, &upstream, &seen).await;
                    });
                }
            });
            Ok(Self {
                endpoint,
                counts,
                _runtime: runtime,
            })
        }

        /// How many calls of `operation` went through so far.
        pub fn count(&self, operation: &str) -> usize {
            let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            counts.get(operation).copied().unwrap_or(0)
        }
    }

    /// One HTTP/1.1 message (head and a Content-Length body) from `stream`, after `buffer`.
    async fn read_message(
        stream: &mut tokio::net::TcpStream,
        buffer: &mut Vec<u8>,
    ) -> anyhow::Result<Option<(String, Vec<u8>)>> {
        use tokio::io::AsyncReadExt as _;
        loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buffer[..end]).to_string();
                let length = head
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                let total = end + 4 + length;
                while buffer.len() < total {
                    let mut chunk = [0u8; 16 * 1024];
                    let n = stream.read(&mut chunk).await?;
                    anyhow::ensure!(n > 0, "closed mid-message");
                    buffer.extend_from_slice(&chunk[..n]);
                }
                let message: Vec<u8> = buffer.drain(..total).collect();
                return Ok(Some((head, message)));
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            buffer.extend_from_slice(&chunk[..n]);
        }
    }

    async fn relay(
        mut inbound: tokio::net::TcpStream,
        upstream: &str,
        seen: &std::sync::Mutex<HashMap<String, usize>>,
    ) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt as _;
        let mut outbound = tokio::net::TcpStream::connect(upstream).await?;
        let (mut from_client, mut from_server) = (Vec::new(), Vec::new());
        while let Some((head, request)) = read_message(&mut inbound, &mut from_client).await? {
            let target = head.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("x-amz-target")
                    .then(|| value.trim().trim_start_matches("AmazonSQS.").to_string())
            });
            let operation = target.or_else(|| {
                let body = String::from_utf8_lossy(&request);
                let action = body.split("Action=").nth(1)?;
                Some(action.split('&').next()?.to_string())
            });
            if let Some(operation) = operation {
                *seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(operation)
                    .or_insert(0) += 1;
            }
            outbound.write_all(&request).await?;
            let Some((_, response)) = read_message(&mut outbound, &mut from_server).await? else {
                return Ok(());
            };
            inbound.write_all(&response).await?;
        }
        Ok(())
    }

    /// A two-thread runtime, for tests whose async parts run beside blocking work (a
    /// proxy, a Lambda batch's threads).
    pub fn threaded_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
        Ok(tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?)
    }

    /// A current-thread runtime for a test's async parts.
    pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
        Ok(tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?)
    }
}

/// A hook on a queue call: an error fails the call before it reaches the queue.
pub type Hook<T> = Box<dyn Fn(&T) -> Result<(), jobhost::queue::QueueError> + Send + Sync>;

/// A queue that hands every call to `inner`, after a hook on receives and one on settles
/// (to inject faults, or to record what the runner settled).
pub struct Observed<Q> {
    /// The queue that does the work.
    pub inner: Q,
    /// Called before each receive with the most asked for.
    pub on_receive: Hook<usize>,
    /// Called before each settle with the batch.
    pub on_settle: Hook<Vec<jobhost::queue::Settlement>>,
}

impl<Q> Observed<Q> {
    /// No hooks yet.
    pub fn new(inner: Q) -> Self {
        Self {
            inner,
            on_receive: Box::new(|_| Ok(())),
            on_settle: Box::new(|_| Ok(())),
        }
    }
}

impl<Q: jobhost::queue::Queue> jobhost::queue::Queue for Observed<Q> {
    async fn receive(
        &self,
        max: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<jobhost::queue::Delivered>, jobhost::queue::QueueError> {
        (self.on_receive)(&max)?;
        self.inner.receive(max, lease).await
    }

    async fn settle(
        &self,
        batch: Vec<jobhost::queue::Settlement>,
    ) -> Result<(), jobhost::queue::QueueError> {
        (self.on_settle)(&batch)?;
        self.inner.settle(batch).await
    }

    async fn release(
        &self,
        deliveries: Vec<jobhost::queue::Delivered>,
    ) -> Result<(), jobhost::queue::QueueError> {
        self.inner.release(deliveries).await
    }

    async fn enqueue(
        &self,
        jobs: Vec<jobhost::queue::NewJob>,
    ) -> Result<Vec<jobhost::queue::Enqueued>, jobhost::queue::QueueError> {
        self.inner.enqueue(jobs).await
    }

    async fn extend(
        &self,
        deliveries: Vec<jobhost::queue::Delivered>,
        lease: std::time::Duration,
    ) -> Result<(), jobhost::queue::QueueError> {
        self.inner.extend(deliveries, lease).await
    }

    async fn is_idle(&self) -> Result<bool, jobhost::queue::QueueError> {
        self.inner.is_idle().await
    }
}

/// One span as an OTLP/HTTP receiver got it.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    /// Hex trace id.
    pub trace_id: String,
    /// Hex span id.
    pub span_id: String,
    /// Hex parent span id (empty for a root).
    pub parent: String,
    /// The span name.
    pub name: String,
    /// String (and integer, as text) attributes.
    pub attributes: std::collections::HashMap<String, String>,
    /// Event names/bodies.
    pub events: Vec<String>,
}

/// A small OTLP/HTTP receiver on 127.0.0.1 (the JSON encoding, `http/json`): no
/// OpenTelemetry Collector package is available here. It stops when dropped.
pub struct OtlpReceiver {
    /// Its port.
    pub port: u16,
    spans: std::sync::Arc<std::sync::Mutex<Vec<ReceivedSpan>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl OtlpReceiver {
    /// Starts the receiver.
    pub fn start() -> anyhow::Result<Self> {
        use std::io::{BufRead as _, Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let spans: std::sync::Arc<std::sync::Mutex<Vec<ReceivedSpan>>> = Default::default();
        let stop: std::sync::Arc<std::sync::atomic::AtomicBool> = Default::default();
        let (kept, stopping) = (spans.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopping.load(std::sync::atomic::Ordering::SeqCst) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                };
                let kept = kept.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_nonblocking(false);
                    let mut reader = std::io::BufReader::new(stream);
                    loop {
                        let mut length = 0usize;
                        let mut line = String::new();
                        let mut first = true;
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if first {
                                first = false;
                                continue;
                            }
                            let trimmed = line.trim_end();
                            if trimmed.is_empty() {
                                break;
                            }
                            if let Some((name, value)) = trimmed.split_once(':')
                                && name.eq_ignore_ascii_case("content-length")
                            {
                                length = value.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; length];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        if let Ok(export) = serde_json::from_slice::<Value>(&body) {
                            kept.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .extend(spans_of(&export));
                        }
                        let answer = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
                        if reader.get_mut().write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(Self { port, spans, stop })
    }

    /// The endpoint to set as `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The spans received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn spans_of(export: &Value) -> Vec<ReceivedSpan> {
    let text = |v: &Value| {
        v.get("stringValue")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| {
                v.get("intValue")
                    .map(|i| i.to_string().trim_matches('"').to_string())
            })
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for resource in export["resourceSpans"].as_array().into_iter().flatten() {
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let attributes = span["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        (
                            a["key"].as_str().unwrap_or("").to_string(),
                            text(&a["value"]),
                        )
                    })
                    .collect();
                let events = span["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| e["name"].as_str().unwrap_or("").to_string())
                    .collect();
                out.push(ReceivedSpan {
                    trace_id: span["traceId"].as_str().unwrap_or("").to_string(),
                    span_id: span["spanId"].as_str().unwrap_or("").to_string(),
                    parent: span["parentSpanId"].as_str().unwrap_or("").to_string(),
                    name: span["name"].as_str().unwrap_or("").to_string(),
                    attributes,
                    events,
                });
            }
        }
    }
    out
}

/// A PostgreSQL server of a test's own (Debian's binaries, `initdb` into a temp folder, as
/// the `postgres` user when the tests run as root), for a test that stops and restarts
/// it. Stopped when dropped.
pub struct PgServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    ids: Option<(u32, u32)>,
    child: Option<std::process::Child>,
    settings: Vec<String>,
}

impl PgServer {
    /// Creates the cluster and starts the server on a free loopback port.
    pub fn start() -> anyhow::Result<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")?
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").is_file())
            .max()
            .ok_or_else(|| anyhow::anyhow!("PostgreSQL is not installed"))?;
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let ids = if root {
            let id = |flag: &str| -> anyhow::Result<u32> {
                let out = std::process::Command::new("id")
                    .args([flag, "postgres"])
                    .output()?;
                Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
            };
            Some((id("-u")?, id("-g")?))
        } else {
            None
        };
        let dir = tempfile::tempdir()?;
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        }
        let mut server = Self {
            bin,
            dir,
            port: std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port(),
            ids,
            child: None,
            settings: Vec::new(),
        };
        let status = server
            .command("initdb")
            .arg("-D")
            .arg(server.dir.path().join("data"))
            .args(["-A", "trust", "-U", "jobhost", "--no-sync"])
            .stdout(std::process::Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "initdb failed");
        server.restart()?;
        Ok(server)
    }

    fn command(&self, program: &str) -> std::process::Command {
        let mut command = std::process::Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.ids {
            use std::os::unix::process::CommandExt as _;
            command.uid(uid).gid(gid);
        }
        command
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://jobhost@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (again), and waits until it accepts connections.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(self.dir.path())
            .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        // Accepting connections, not just listening (it listens while it starts up).
        let ready = || {
            std::process::Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success())
        };
        while !ready() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "PostgreSQL did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(())
    }

    /// Restarts the server with TLS on, with `cert` and `key` (PEM), and accepting TCP
    /// connections over TLS only.
    pub fn require_tls(&mut self, cert: &Path, key: &Path) -> anyhow::Result<()> {
        let data = self.dir.path().join("data");
        for (from, to) in [(cert, "server.crt"), (key, "server.key")] {
            let path = data.join(to);
            std::fs::copy(from, &path)?;
            // PostgreSQL refuses a key others can read.
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            if let Some((uid, gid)) = self.ids {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
            }
        }
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostnossl all all 127.0.0.1/32 reject\n",
        )?;
        self.settings = vec!["ssl=on".into()];
        self.stop()?;
        self.restart()
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (fast shutdown: open connections are closed).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            std::process::Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
