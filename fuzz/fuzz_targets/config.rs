//! Any config text, with and without one environment override: loading must succeed or name
//! what is wrong, never panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use notirouter::config::Config;

fuzz_target!(|input: (&str, &str)| {
    let (text, override_value) = input;
    let path = Path::new("fuzz.toml");
    if let Err(error) = Config::parse(text, path, Vec::new()) {
        assert!(!error.to_string().is_empty());
    }
    let env = vec![("NOTIROUTER__SERVER__AUTH__ALLOW_IPS".to_owned(), override_value.to_owned())];
    let _ = Config::parse(text, path, env);
});
