//! Any byte string is an envelope or a clean error, never a panic; a parsed envelope
//! survives a round trip.
#![no_main]

use jobhost::job::{Envelope, EnvelopeError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    match Envelope::parse(body, 64 * 1024) {
        Ok(envelope) => {
            assert!(!envelope.job.trim().is_empty());
            let again = Envelope::parse(envelope.to_body().as_bytes(), usize::MAX);
            assert_eq!(again.map(|e| e.job), Ok(envelope.job));
        }
        Err(EnvelopeError::TooLarge { size, cap }) => assert!(size > cap),
        Err(EnvelopeError::Malformed(message)) => assert!(!message.is_empty()),
    }
});
