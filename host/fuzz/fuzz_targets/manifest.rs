//! Any text is a valid manifest or an error naming the file, never a panic.
#![no_main]

use jobhost::plugin::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(error) = Manifest::parse(text, "fuzz.toml") {
        assert!(error.to_string().contains("fuzz.toml"));
    }
});
