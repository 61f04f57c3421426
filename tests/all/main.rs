//! jobhost's integration tests: one binary, a module per topic.

mod cli;
mod dashboard;
mod examples;
mod faults;
mod harness;
mod hostile;
mod http;
mod lambda;
mod loading;
mod operate;
mod outcomes;
mod poison;
mod postgres;
mod process;
mod queue;
mod runner;
mod scaffold;
mod sqs;
mod triggers;

/// Every fixture guest must have a test of its own name in one of these modules, or this
/// does not build.
mod fixture_tests {
    #[allow(unused_imports, reason = "only the names are checked")]
    pub(crate) use crate::harness::*;
    #[allow(unused_imports, reason = "only the names are checked")]
    pub(crate) use crate::hostile::*;
    #[allow(unused_imports, reason = "only the names are checked")]
    pub(crate) use crate::http::*;
    #[allow(unused_imports, reason = "only the names are checked")]
    pub(crate) use crate::outcomes::*;
    #[allow(unused_imports, reason = "only the names are checked")]
    pub(crate) use crate::triggers::*;
}

macro_rules! assert_test_exists {
    ($name:ident) => {
        #[allow(unused_imports, reason = "only checks that the test exists")]
        use crate::fixture_tests::$name as _;
    };
}
jobhost_tests::foreach_fixture!(assert_test_exists);
