//! jobhost: a background-job host whose handlers are sandboxed WebAssembly components.
//!
//! A handler is a component targeting the `jobhost:plugin/job-plugin` world (`wit/`).
//! The host loads every component of a folder ([`plugin::Loader`]), routes each queue
//! message to its handler, checks the payload against the handler's JSON Schema, runs it in
//! a fresh instance under fuel, memory and wall-clock limits ([`sandbox`]), and classifies
//! the result into a [`job::Outcome`]: done, retry after a backoff, or dead-letter
//! ([`dispatch::Dispatcher::dispatch`]). The [`run`] module takes jobs from a [`queue`] or
//! from AWS Lambda. `docs/ARCHITECTURE.md` has the module map.

pub mod bindings;
pub mod clock;
pub mod config;
pub mod dispatch;
pub mod engine;
pub mod job;
pub mod metrics;
pub mod plugin;
pub mod queue;
pub mod run;
pub mod sandbox;
pub mod telemetry;
pub mod testing;
pub mod trigger;
