//! The runner over the in-memory queue, and over a queue whose writes fail: a host-side
//! fault acknowledges nothing, and the loop keeps going.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use jobhost::queue::memory::MemoryQueue;
use jobhost::queue::{Delivered, Enqueued, NewJob, Queue, QueueError, Settlement};
use jobhost::runner::Termination;
use jobhost_tests::{Handlers, drain_queue, fixtures};
use serde_json::json;

/// The in-memory queue, with its first `failures` settle calls and receive calls failing.
struct Flaky {
    inner: MemoryQueue,
    settle_failures: AtomicU32,
    receive_failures: AtomicU32,
}

fn fail(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

impl Queue for Flaky {
    async fn receive(&self, max: usize, lease: Duration) -> Result<Vec<Delivered>, QueueError> {
        if fail(&self.receive_failures) {
            return Err(QueueError("disk unreachable".into()));
        }
        self.inner.receive(max, lease).await
    }

    async fn settle(&self, batch: Vec<Settlement>) -> Result<(), QueueError> {
        if fail(&self.settle_failures) {
            return Err(QueueError("disk unreachable".into()));
        }
        self.inner.settle(batch).await
    }

    async fn release(&self, deliveries: Vec<Delivered>) -> Result<(), QueueError> {
        self.inner.release(deliveries).await
    }

    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, QueueError> {
        self.inner.enqueue(jobs).await
    }

    async fn extend(&self, deliveries: Vec<Delivered>, lease: Duration) -> Result<(), QueueError> {
        self.inner.extend(deliveries, lease).await
    }

    async fn is_idle(&self) -> Result<bool, QueueError> {
        self.inner.is_idle().await
    }
}

#[test]
fn the_runner_drains_the_memory_queue_with_children() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    let dispatcher = Arc::new(handlers.dispatcher()?);
    let queue = Arc::new(MemoryQueue::new());
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(queue.enqueue(vec![NewJob::new(
        "echo",
        json!({"message": "parent", "children": 3}),
    )]))?;
    let summary = drain_queue(queue.clone(), dispatcher)?;
    assert_eq!(summary.termination, Termination::Drained);
    assert_eq!(
        (summary.done, queue.count("done")),
        (4, 4),
        "the parent and its 3 children"
    );
    Ok(())
}

#[test]
fn a_queue_that_fails_to_record_results_loses_no_job() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    let dispatcher = Arc::new(handlers.dispatcher()?);
    let queue = Arc::new(Flaky {
        inner: MemoryQueue::new(),
        settle_failures: AtomicU32::new(2),
        receive_failures: AtomicU32::new(2),
    });
    let jobs: Vec<NewJob> = (0..20)
        .map(|i| NewJob::new("echo", json!({"message": format!("m{i}")})))
        .collect();
    tokio::runtime::Runtime::new()?.block_on(queue.enqueue(jobs))?;
    let summary = drain_queue(queue.clone(), dispatcher)?;
    // Two failed receives and two failed writes later, every job is recorded as done.
    assert_eq!(summary.termination, Termination::Drained);
    assert_eq!(queue.inner.count("done"), 20);
    assert_eq!(
        queue.inner.count("running") + queue.inner.count("queued"),
        0
    );
    Ok(())
}
