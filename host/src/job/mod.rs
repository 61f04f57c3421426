//! What a job is: the [`Envelope`] it arrives in, the [`JobRequest`] it is enqueued from,
//! the [`Outcome`] of one delivery and the [`Report`] of everything it produced, and the
//! [`RetryPolicy`] that turns a failure into a delay.

mod envelope;
mod outcome;
mod request;
mod retry;

pub use envelope::*;
pub use outcome::*;
pub use request::*;
pub use retry::*;
