//! jobhost's integration tests: one binary, a module per topic.

mod cli;
mod examples;
mod loading;
mod outcomes;
mod process;
mod queue;
