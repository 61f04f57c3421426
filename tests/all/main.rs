//! jobhost's integration tests: one binary, a module per topic.

mod cli;
mod loading;
mod outcomes;
mod process;
mod queue;
