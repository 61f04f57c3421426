//! The poller: written once over [`Queue`], it claims batches, runs each job on a worker
//! thread through [`Dispatcher`], and settles the outcomes in batches.
//!
//! While a job runs its lease is renewed (every third of the lease, through
//! [`Queue::extend`]), so a job may run longer than the lease; deliveries of one ordering
//! group (SQS FIFO) run in order on one worker, and a failure gives the rest of the group
//! back unstarted.
//!
//! The loop never ends on a bad message or a failed queue call: those are logged and
//! retried with backoff. It ends only by draining (`--drain`) or shutting down, and says
//! which in its [`Termination`]. Main types: [`RunOptions`], [`Runner`], [`RunSummary`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};

use crate::clock::Clock;
use crate::dispatch::Dispatcher;
use crate::job::Outcome;
use crate::queue::{Delivered, Queue, Settlement};
use crate::run::deliver::{Executor, Observers, Ran, units};

/// The most deliveries claimed in one call (on PostgreSQL each claim has a cost of its own:
/// with 1,024 the claim statements took a fifth less server time than with 256 on the
/// no-op benchmark).
const MAX_BATCH: usize = 1024;
/// The most settlements written in one transaction.
const MAX_SETTLE_BATCH: usize = 512;
/// The longest sleep between polls of an idle queue.
const IDLE_POLL_MAX: Duration = Duration::from_millis(100);
/// The longest backoff after a failed queue call.
const ERROR_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The shortest interval between lease renewals.
const MIN_RENEW_INTERVAL: Duration = Duration::from_millis(300);
/// How much work a host claims ahead of its workers, in time at the rate jobs finish
/// (between [`RunOptions::prefetch`] and [`RunOptions::max_prefetch`] deliveries).
const PREFETCH_WINDOW: Duration = Duration::from_millis(100);

/// Deliveries received and not yet settled, by receipt: their leases are renewed. The
/// async lock is held by a renewal and by a settlement for their whole queue calls, so a
/// renewal never lands after (and undoes) a retry's backoff or a release.
type Leased = Arc<tokio::sync::Mutex<HashMap<String, Delivered>>>;

/// How the runner behaves.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Jobs running at once (worker threads).
    pub concurrency: usize,
    /// Deliveries claimed ahead of free workers, so workers never wait for a claim: at
    /// least this many.
    pub prefetch: usize,
    /// At most this many claimed ahead: when jobs finish fast the runner claims what its
    /// workers finish in [`PREFETCH_WINDOW`] (100 ms), up to this, in fewer and larger
    /// claims and settles; slow jobs stay with `prefetch`, so hosts share a backlog.
    pub max_prefetch: usize,
    /// How long a claim is leased; renewed every third of it while the job waits or runs.
    pub lease: Duration,
    /// Exit once nothing is due or running.
    pub drain: bool,
    /// How long running jobs may take to finish after a shutdown signal.
    pub grace: Duration,
}

impl RunOptions {
    /// Defaults for `concurrency` workers and handlers whose longest timeout is
    /// `max_timeout`.
    pub fn new(concurrency: usize, max_timeout: Duration) -> Self {
        let concurrency = concurrency.max(1);
        Self {
            concurrency,
            prefetch: (concurrency * 4).max(64),
            max_prefetch: (concurrency * 4).max(1024),
            lease: max_timeout + Duration::from_secs(60),
            drain: false,
            grace: Duration::from_secs(30),
        }
    }
}

/// Why the loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Termination {
    /// `--drain` and nothing was due or running.
    Drained,
    /// A shutdown signal; `unfinished` jobs were still running when the grace ran out
    /// (their leases will expire and they will run again).
    Shutdown {
        /// Claimed but never started, given back at once.
        released: u64,
        /// Still running after the grace period.
        unfinished: u64,
    },
}

/// What the run did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunSummary {
    /// How it ended.
    pub termination: Termination,
    /// Jobs done.
    pub done: u64,
    /// Jobs scheduled for a retry.
    pub retried: u64,
    /// Jobs dead-lettered.
    pub dead: u64,
    /// Jobs cancelled while they ran.
    pub cancelled: u64,
}

#[derive(Default)]
struct Counters {
    done: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
    cancelled: AtomicU64,
    released: AtomicU64,
    /// Deliveries received and not yet settled.
    in_flight: AtomicUsize,
    /// Room taken by receive calls still in flight.
    reserved: AtomicUsize,
    /// Deliveries to hold beyond the workers now (see [`RunOptions::max_prefetch`]).
    ahead: AtomicUsize,
}

impl Counters {
    /// Takes up to `most` of the room left under `limit` (in flight plus reserved) for one
    /// receive call; 0 when there is none.
    fn reserve(&self, limit: usize, most: usize) -> usize {
        loop {
            let reserved = self.reserved.load(Ordering::SeqCst);
            let taken = self.in_flight.load(Ordering::SeqCst) + reserved;
            let room = limit.saturating_sub(taken).min(most);
            if room == 0
                || self
                    .reserved
                    .compare_exchange(
                        reserved,
                        reserved + room,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    )
                    .is_ok()
            {
                return room;
            }
        }
    }
}

/// The poller over one queue.
pub struct Runner<Q: Queue> {
    queue: Arc<Q>,
    dispatcher: Arc<Dispatcher>,
    clock: Arc<dyn Clock>,
    options: RunOptions,
    wake: Arc<Notify>,
    settled: Arc<Notify>,
    observers: Observers,
}

impl<Q: Queue> Runner<Q> {
    /// A runner; `wake` lets in-process enqueuers (the HTTP API) cut an idle poll short.
    pub fn new(
        queue: Arc<Q>,
        dispatcher: Arc<Dispatcher>,
        clock: Arc<dyn Clock>,
        options: RunOptions,
    ) -> Self {
        Self {
            queue,
            dispatcher,
            clock,
            options,
            wake: Arc::new(Notify::new()),
            settled: Arc::new(Notify::new()),
            observers: Observers::default(),
        }
    }

    /// Its jobs report to and are steered by `observers` (see [`Observers`]).
    pub fn observed_by(mut self, observers: Observers) -> Self {
        self.observers = observers;
        self
    }

    /// Notifies every waiter each time a batch of results has been recorded.
    pub fn settled(&self) -> Arc<Notify> {
        self.settled.clone()
    }

    /// Notified to poll at once.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Runs until drained or until `shutdown` turns true.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> RunSummary {
        let counters = Arc::new(Counters::default());
        let stopping = Arc::new(AtomicBool::new(false));
        let capacity = Arc::new(Notify::new());
        let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded::<Vec<Delivered>>();
        let (results_tx, results_rx) = mpsc::unbounded_channel::<Ran>();
        let leased: Leased = Arc::default();
        let workers = self.start_workers(jobs_rx, results_tx, stopping.clone());
        let settler = tokio::spawn(settle_loop(
            self.queue.clone(),
            results_rx,
            counters.clone(),
            capacity.clone(),
            self.settled.clone(),
            leased.clone(),
        ));
        let renewer = tokio::spawn(renew_leases(
            self.queue.clone(),
            leased.clone(),
            self.options.lease,
        ));
        let termination = self
            .poll_loop(&jobs_tx, &counters, &capacity, &shutdown, &leased)
            .await;
        // Stop: workers finish the job in hand and hand back what they have not started.
        stopping.store(true, Ordering::SeqCst);
        drop(jobs_tx);
        let unfinished = self.join_workers(workers, &counters).await;
        if unfinished == 0 {
            let _ = settler.await;
        } else {
            // Workers past the grace still hold their result senders: record what is in
            // hand, then stop waiting (their leases expire and the jobs run again).
            let _ = tokio::time::timeout(Duration::from_secs(2), settler).await;
        }
        renewer.abort();
        let termination = match termination {
            Termination::Drained => Termination::Drained,
            Termination::Shutdown { .. } => Termination::Shutdown {
                released: counters.released.load(Ordering::SeqCst),
                unfinished,
            },
        };
        RunSummary {
            termination,
            done: counters.done.load(Ordering::SeqCst),
            retried: counters.retried.load(Ordering::SeqCst),
            dead: counters.dead.load(Ordering::SeqCst),
            cancelled: counters.cancelled.load(Ordering::SeqCst),
        }
    }

    /// Deliveries held at once at most: running, and claimed ahead for free workers.
    fn max_in_flight(&self) -> usize {
        self.options.concurrency + self.most_ahead()
    }

    /// The most deliveries claimed ahead.
    fn most_ahead(&self) -> usize {
        self.options.max_prefetch.max(self.options.prefetch)
    }

    /// Deliveries held at once now: running, and the work of the next
    /// [`PREFETCH_WINDOW`] at the rate jobs finish.
    fn in_flight_now(&self, counters: &Counters) -> usize {
        self.options.concurrency
            + counters
                .ahead
                .load(Ordering::Relaxed)
                .clamp(self.options.prefetch, self.most_ahead())
    }

    /// Keeps [`Queue::receivers`] receive calls in flight, each handing its deliveries to
    /// the workers as soon as it returns; ends when one of them ends (drained or shut down).
    async fn poll_loop(
        &self,
        jobs: &crossbeam_channel::Sender<Vec<Delivered>>,
        counters: &Counters,
        capacity: &Notify,
        shutdown: &watch::Receiver<bool>,
        leased: &Leased,
    ) -> Termination {
        let receivers = self.queue.receivers().max(1);
        // Each call takes its share of the room, so every loop has a call in flight.
        let per_call = self.max_in_flight().div_ceil(receivers).min(MAX_BATCH);
        let loops = (0..receivers).map(|_| {
            Box::pin(self.receive_loop(
                jobs,
                counters,
                capacity,
                shutdown.clone(),
                leased,
                per_call,
            ))
        });
        futures_util::future::select_all(loops).await.0
    }

    async fn receive_loop(
        &self,
        jobs: &crossbeam_channel::Sender<Vec<Delivered>>,
        counters: &Counters,
        capacity: &Notify,
        mut shutdown: watch::Receiver<bool>,
        leased: &Leased,
        per_call: usize,
    ) -> Termination {
        let mut idle = Duration::from_millis(1);
        let mut error_backoff = Duration::from_millis(100);
        loop {
            if *shutdown.borrow() {
                return Termination::Shutdown {
                    released: 0,
                    unfinished: 0,
                };
            }
            let room = counters.reserve(self.in_flight_now(counters), per_call);
            if room == 0 {
                // Another loop may take the freed room first: look again after a while.
                tokio::select! {
                    _ = capacity.notified() => {}
                    _ = tokio::time::sleep(IDLE_POLL_MAX) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            // A long poll (SQS) gives way to a shutdown; what it would have received stays
            // hidden until its visibility ends, then comes back.
            let received = tokio::select! {
                received = self.queue.receive(room, self.options.lease) => received,
                _ = shutdown.changed() => {
                    counters.reserved.fetch_sub(room, Ordering::SeqCst);
                    continue;
                }
            };
            let got = received.as_ref().map_or(0, Vec::len);
            counters.in_flight.fetch_add(got, Ordering::SeqCst);
            counters.reserved.fetch_sub(room, Ordering::SeqCst);
            match received {
                Ok(batch) if batch.is_empty() => {
                    let in_flight = counters.in_flight.load(Ordering::SeqCst);
                    if self.options.drain
                        && in_flight == 0
                        && self.queue.is_idle().await.unwrap_or(false)
                    {
                        return Termination::Drained;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(idle) => {}
                        _ = self.wake.notified() => {}
                        _ = capacity.notified(), if in_flight > 0 => {}
                        _ = shutdown.changed() => {}
                    }
                    idle = (idle * 2).min(IDLE_POLL_MAX);
                }
                Ok(batch) => {
                    idle = Duration::from_millis(1);
                    error_backoff = Duration::from_millis(100);
                    {
                        // Leased from the moment of receipt: renewed while it waits or runs.
                        let mut leased = leased.lock().await;
                        for delivered in &batch {
                            leased.insert(delivered.receipt.clone(), delivered.clone());
                        }
                    }
                    for unit in units(batch) {
                        // The receiving side lives until every worker has stopped.
                        let _ = jobs.send(unit);
                    }
                }
                Err(error) => {
                    tracing::error!(%error, backoff_ms = error_backoff.as_millis() as u64, "receiving from the queue failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(error_backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    error_backoff = (error_backoff * 2).min(ERROR_BACKOFF_MAX);
                }
            }
        }
    }

    fn start_workers(
        &self,
        jobs: crossbeam_channel::Receiver<Vec<Delivered>>,
        results: mpsc::UnboundedSender<Ran>,
        stopping: Arc<AtomicBool>,
    ) -> Vec<JoinHandle<()>> {
        let executor = Arc::new(
            Executor::new(self.dispatcher.clone(), self.clock.clone())
                .observed_by(self.observers.clone()),
        );
        (0..self.options.concurrency)
            .filter_map(|index| {
                let worker = Worker {
                    jobs: jobs.clone(),
                    results: results.clone(),
                    stopping: stopping.clone(),
                    executor: executor.clone(),
                };
                std::thread::Builder::new()
                    .name(format!("jobhost-worker-{index}"))
                    .spawn(move || worker.run())
                    .map_err(|error| tracing::error!(%error, "cannot start a worker thread"))
                    .ok()
            })
            .collect()
    }

    async fn join_workers(&self, workers: Vec<JoinHandle<()>>, counters: &Counters) -> u64 {
        let joined = tokio::task::spawn_blocking(move || {
            for worker in workers {
                let _ = worker.join();
            }
        });
        match tokio::time::timeout(self.options.grace, joined).await {
            Ok(_) => 0,
            Err(_) => {
                let unfinished = counters.in_flight.load(Ordering::SeqCst) as u64;
                tracing::warn!(
                    unfinished,
                    grace_s = self.options.grace.as_secs(),
                    "jobs still running after the grace period; their leases will expire and they will run again"
                );
                unfinished
            }
        }
    }
}

/// Renews the lease of every delivery received and not yet settled, every third of the
/// lease. A renewal that fails is logged; the next one tries again.
async fn renew_leases<Q: Queue>(queue: Arc<Q>, leased: Leased, lease: Duration) {
    let interval = (lease / 3).max(MIN_RENEW_INTERVAL);
    loop {
        tokio::time::sleep(interval).await;
        let leased = leased.lock().await;
        let due: Vec<Delivered> = leased.values().cloned().collect();
        if due.is_empty() {
            continue;
        }
        if let Err(error) = queue.extend(due, lease).await {
            tracing::warn!(%error, "lease renewal failed; retrying at the next interval");
        }
        drop(leased);
    }
}

struct Worker {
    jobs: crossbeam_channel::Receiver<Vec<Delivered>>,
    results: mpsc::UnboundedSender<Ran>,
    stopping: Arc<AtomicBool>,
    executor: Arc<Executor>,
}

impl Worker {
    fn run(self) {
        while let Ok(unit) = self.jobs.recv() {
            self.executor.run_unit(unit, None, &self.stopping, |ran| {
                // The settler lives until every worker has stopped.
                let _ = self.results.send(ran);
            });
        }
    }
}

async fn settle_loop<Q: Queue>(
    queue: Arc<Q>,
    mut results: mpsc::UnboundedReceiver<Ran>,
    counters: Arc<Counters>,
    capacity: Arc<Notify>,
    settled_notify: Arc<Notify>,
    leased: Leased,
) {
    let mut pace = Pace::new();
    while let Some(first) = results.recv().await {
        let mut settled = Vec::new();
        let mut unstarted = Vec::new();
        let mut next = Some(first);
        while let Some(result) = next.take() {
            match result {
                Ran::Settled(s) => settled.push(s),
                Ran::Unstarted(d) => unstarted.push(d),
            }
            if settled.len() + unstarted.len() < MAX_SETTLE_BATCH {
                next = results.try_recv().ok();
            }
        }
        let count = settled.len() + unstarted.len();
        if let Some(ahead) = pace.finished(settled.len()) {
            counters.ahead.store(ahead, Ordering::Relaxed);
        }
        let mut leased = leased.lock().await;
        {
            for receipt in settled
                .iter()
                .map(|s| &s.delivered.receipt)
                .chain(unstarted.iter().map(|d| &d.receipt))
            {
                leased.remove(receipt);
            }
        }
        tally(&settled, &counters);
        write_settlements(queue.as_ref(), settled).await;
        if !unstarted.is_empty() {
            counters
                .released
                .fetch_add(unstarted.len() as u64, Ordering::SeqCst);
            if let Err(error) = queue.release(unstarted).await {
                tracing::error!(%error, "could not give back unstarted jobs; their leases will expire");
            }
        }
        drop(leased);
        counters.in_flight.fetch_sub(count, Ordering::SeqCst);
        // Every waiting receive loop looks again; a loop not yet waiting finds the permit.
        capacity.notify_waiters();
        capacity.notify_one();
        settled_notify.notify_waiters();
    }
}

/// The rate jobs finish at, as the number finished per [`PREFETCH_WINDOW`].
struct Pace {
    since: std::time::Instant,
    finished: usize,
}

impl Pace {
    fn new() -> Self {
        Self {
            since: std::time::Instant::now(),
            finished: 0,
        }
    }

    /// Counts `count` more finished jobs; once a window has passed, the jobs finished per
    /// window since the last measure (a long idle gap makes it small again).
    fn finished(&mut self, count: usize) -> Option<usize> {
        self.finished += count;
        let elapsed = self.since.elapsed();
        if elapsed < PREFETCH_WINDOW {
            return None;
        }
        let per_window =
            self.finished as f64 * PREFETCH_WINDOW.as_secs_f64() / elapsed.as_secs_f64();
        *self = Self::new();
        Some(per_window as usize)
    }
}

fn tally(settled: &[Settlement], counters: &Counters) {
    for settlement in settled {
        let counter = match settlement.outcome {
            Outcome::Done { .. } => &counters.done,
            Outcome::Retry { .. } => &counters.retried,
            Outcome::DeadLetter { .. } => &counters.dead,
            Outcome::Cancelled { .. } => &counters.cancelled,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Writes settlements, retrying a failed write a few times. When the queue stays
/// unreachable nothing is acknowledged, and the leases bring the jobs back.
async fn write_settlements<Q: Queue>(queue: &Q, settled: Vec<Settlement>) {
    if settled.is_empty() {
        return;
    }
    let mut backoff = Duration::from_millis(50);
    for attempt in 1..=5 {
        match queue.settle(settled.clone()).await {
            Ok(()) => return,
            Err(error) => {
                tracing::error!(%error, attempt, jobs = settled.len(), "recording results failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
    }
    tracing::error!(
        jobs = settled.len(),
        "results not recorded; the jobs will run again when their leases expire"
    );
}
