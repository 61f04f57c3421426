//! The ways jobs arrive and run: the [`poller`] over any queue, the [`lambda`] runtime, and
//! around the poller `jobhost run`'s [`serve`], its [`http`] API and [`dashboard`], the [`schedule`]r and the
//! [`live`] steering of running jobs (progress written through, cancellation).

pub mod dashboard;
pub mod deliver;
pub mod http;
pub mod lambda;
pub mod live;
pub mod poller;
pub mod schedule;
pub mod serve;
