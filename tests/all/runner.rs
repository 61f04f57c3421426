//! The runner over the in-memory queue, and over a queue whose writes fail: a host-side
//! fault acknowledges nothing, and the loop keeps going.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use jobhost::queue::memory::MemoryQueue;
use jobhost::queue::{NewJob, Queue, QueueError};
use jobhost::run::poller::Termination;
use jobhost_tests::{Handlers, Observed, drain_queue, fixtures};
use serde_json::json;

/// A hook that fails its first `failures` calls (a disk that comes back).
fn failing<T>(failures: u32) -> jobhost_tests::Hook<T> {
    let left = AtomicU32::new(failures);
    Box::new(move |_| {
        match left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) {
            Ok(_) => Err(QueueError("disk unreachable".into())),
            Err(_) => Ok(()),
        }
    })
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
    let mut flaky = Observed::new(MemoryQueue::new());
    flaky.on_receive = failing(2);
    flaky.on_settle = failing(2);
    let queue = Arc::new(flaky);
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
