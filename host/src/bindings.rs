//! The one `bindgen!` of the host, for the `jobhost:plugin/job-plugin` world in `wit/`.
//! Everything else uses the types re-exported here.

mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "job-plugin",
    });
}

pub(crate) use generated::JobPlugin;
pub use generated::JobPluginPre;
pub use generated::jobhost::plugin::host;
pub(crate) use generated::jobhost::plugin::types as types_iface;
pub use generated::jobhost::plugin::types::{
    EnqueueOptions, HandlerInfo, Job, JobError, LogLevel, TransientError,
};
