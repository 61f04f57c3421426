//! One job in a fresh instance, in the shape of wasmtime's `wasi-keyvalue`:
//!
//! - `state`: the store's data, [`JobState`] (WASI context, limiter, capture), new per job;
//! - `host`: the host imports on a short-lived view ([`JobHost`]) and the one
//!   [`add_to_linker`];
//! - `capture`: the bounded record of what the guest logs, reports and enqueues;
//! - `limits`, `outbound_http`: the [`Limits`] and the HTTP grant policy it runs under;
//! - `live`: what a running job shares with its runner (cancellation, live progress);
//! - `execute`: [`execute`] runs one call and measures it, [`describe`] asks a handler
//!   what it is; `error` tells a wasmtime error.

mod capture;
mod error;
mod execute;
mod host;
mod limits;
mod live;
mod outbound_http;
mod state;

pub use capture::*;
pub use error::*;
pub use execute::*;
pub use host::*;
pub use limits::*;
pub use live::*;
pub use outbound_http::*;
pub use state::*;
