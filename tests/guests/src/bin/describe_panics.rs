//! Panics in `describe()`: the host must refuse to load it, and load the rest.
use jobhost_guest::__private::{Guest, HandlerInfo, RawJob, RawJobError};

struct DescribePanics;

impl Guest for DescribePanics {
    fn describe() -> HandlerInfo {
        panic!("describe is broken");
    }

    fn handle(_job: RawJob) -> Result<Option<String>, RawJobError> {
        Ok(None)
    }
}

jobhost_guest::bindings::export!(DescribePanics with_types_in jobhost_guest::bindings);

fn main() {}
