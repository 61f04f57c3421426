//! The ways jobs arrive and run: the [`poller`] over any queue, the [`lambda`] runtime, and
//! around the poller `jobhost run`'s [`serve`], its [`http`] API and the [`schedule`]r.

pub mod deliver;
pub mod http;
pub mod lambda;
pub mod poller;
pub mod schedule;
pub mod serve;
