//! Any body the platform (or anyone) could post: parsing and validation must answer with a
//! notification or a refusal, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(notification) = notirouter::notification::parse(body) {
        for problem in &notification.problems {
            assert!(!problem.field.is_empty() && !problem.error.is_empty());
        }
    }
});
