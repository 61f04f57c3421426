//! jobhost: a background-job host whose handlers are sandboxed WebAssembly components.
//!
//! A handler is a component targeting the `jobhost:plugin/job-plugin` world (`wit/`).
//! The host loads every component of a folder ([`Loader`]), routes each queue message to
//! its handler, checks the payload against the handler's JSON Schema, runs it in a fresh
//! instance under fuel, memory and wall-clock limits, and classifies the result into an
//! [`Outcome`]: done, retry after a backoff, or dead-letter ([`Dispatcher::dispatch`]).

pub mod bindings;
pub mod cache;
mod capture;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dispatch;
pub mod engine;
pub mod envelope;
mod execute;
pub mod http;
pub mod lambda;
pub mod limits;
pub mod manifest;
pub mod outbound_http;
pub mod outcome;
pub mod plugin;
pub mod queue;
pub mod request;
pub mod retry;
pub mod runner;
pub mod scaffold;
pub mod schedule;
pub mod schema;
pub mod serve;
mod state;
pub mod testing;

pub use cache::{ArtifactCache, ArtifactSource};
pub use config::{HostConfig, StartupError};
pub use dispatch::{Delivery, DispatchOptions, Dispatcher, Rejection};
pub use engine::{EngineOptions, JobEngine};
pub use envelope::{Envelope, EnvelopeError};
pub use limits::Limits;
pub use manifest::Manifest;
pub use outcome::{EnqueuedJob, LogLevel, LogLine, Outcome, Progress, Reason, Report};
pub use plugin::{LoadError, Loader, Plugin, PluginSet, SchemaSource};
pub use retry::RetryPolicy;
pub use schema::PayloadSchema;
pub use state::{JobState, ResolvedGrants};
