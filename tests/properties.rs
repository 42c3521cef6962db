//! Property tests of the parsing, validation and config paths: any input gives an answer,
//! never a panic, and the duplicate key ignores layout but nothing else; address lists,
//! `X-Forwarded-For` and tokens are read without panicking and without leaking the token. Case counts are
//! bounded so the suite stays fast; `PROPTEST_CASES` raises them for a longer hunt.

use std::path::Path;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use notirouter::config::{Config, check_token, parse_net};
use notirouter::http::client_address;
use notirouter::notification::{self, BodyError};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn cases() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

/// JSON values of bounded depth and size, with keys the platform uses among random ones.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("notifyType".to_owned()),
        Just("deviceId".to_owned()),
        Just("swUpgradeResult".to_owned()),
        Just("errorCode".to_owned()),
        Just("commandId".to_owned()),
        Just("result".to_owned()),
        "[a-zA-Z]{1,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop_oneof![
            Just("swUpgradeResultNotify".to_owned()),
            Just("fwUpgradeResultNotify".to_owned()),
            Just("FAIL".to_owned()),
            "\\PC{0,12}",
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec(("[a-zA-Z]{1,10}", json_value()), 0..10)
        .prop_map(|entries| entries.into_iter().collect())
}

/// The same object written with its keys in reverse order and spaces around the punctuation.
fn relaid(object: &Map<String, Value>) -> String {
    let entries: Vec<String> = object
        .iter()
        .rev()
        .map(|(key, value)| format!(" {} : {} ", Value::from(key.as_str()), relaid_value(value)))
        .collect();
    format!("{{ {} }}", entries.join(" , "))
}

fn relaid_value(value: &Value) -> String {
    match value {
        Value::Object(object) => relaid(object),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(relaid_value).collect();
            format!("[ {} ]", items.join(" , "))
        }
        scalar => scalar.to_string(),
    }
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn any_bytes_parse_or_are_refused_without_panicking(body in prop::collection::vec(any::<u8>(), 0..512)) {
        match notification::parse(&body) {
            Ok(_) | Err(BodyError::NotJson(_)) | Err(BodyError::NotObject) => {}
        }
    }

    #[test]
    fn any_json_object_is_a_notification_with_named_problems(object in json_object()) {
        let body = Value::Object(object).to_string();
        let parsed = notification::parse(body.as_bytes()).expect("an object is a notification");
        for problem in &parsed.problems {
            prop_assert!(!problem.field.is_empty() && !problem.error.is_empty());
        }
    }

    #[test]
    fn the_duplicate_key_ignores_layout_and_key_order(object in json_object()) {
        let compact = Value::Object(object.clone()).to_string();
        let first = notification::parse(compact.as_bytes()).expect("an object");
        let second = notification::parse(relaid(&object).as_bytes()).expect("the same object");
        prop_assert_eq!(first.hash, second.hash);
    }

    #[test]
    fn the_duplicate_key_changes_with_any_value(object in json_object(), key in "[a-zA-Z]{1,10}", value in json_value()) {
        let mut changed = object.clone();
        let before = changed.insert(key, value.clone());
        prop_assume!(before.as_ref() != Some(&value));
        let first = notification::parse(Value::Object(object).to_string().as_bytes()).expect("an object");
        let second = notification::parse(Value::Object(changed).to_string().as_bytes()).expect("an object");
        prop_assert_ne!(first.hash, second.hash);
    }

    #[test]
    fn any_config_text_loads_or_is_refused_without_panicking(text in "\\PC{0,300}") {
        let _ = Config::parse(&text, Path::new("fuzz.toml"), Vec::new());
    }

    #[test]
    fn any_config_shaped_text_loads_or_names_what_is_wrong(
        section in prop_oneof![Just("server"), Just("store"), Just("scripts"), Just("delivery"), Just("email"), Just("nowhere")],
        key in "[a-z_]{1,16}",
        value in prop_oneof![Just("\"10s\"".to_owned()), Just("0".to_owned()), Just("true".to_owned()), "\"\\PC{0,12}\"", "-?[0-9]{1,12}"],
    ) {
        let text = format!("[{section}]\n{key} = {value}\n");
        if let Err(error) = Config::parse(&text, Path::new("fuzz.toml"), Vec::new()) {
            prop_assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn any_environment_override_loads_or_names_the_variable(
        path in "[A-Z_]{1,12}(__[A-Z_]{1,12}){0,2}",
        value in "\\PC{0,20}",
    ) {
        let var = format!("NOTIROUTER__{path}");
        if let Err(error) = Config::parse("", Path::new("fuzz.toml"), vec![(var.clone(), value)]) {
            // Either the variable is named, or (for a rule across keys of its section) a key of
            // the section it set.
            let message = error.to_string();
            let section = path.split("__").next().unwrap_or_default().to_lowercase();
            prop_assert!(
                message.contains(&var) || message.starts_with(&format!("{section}.")),
                "{}",
                message
            );
        }
    }

    #[test]
    fn any_text_is_a_net_or_refused_without_panicking(text in "\\PC{0,40}") {
        let _ = parse_net(&text);
    }

    #[test]
    fn a_net_written_as_cidr_holds_its_address(address in ip_address(), prefix in 0u8..=128) {
        let prefix = if address.is_ipv4() { prefix % 33 } else { prefix };
        let net = parse_net(&format!("{address}/{prefix}")).expect("a valid CIDR parses");
        prop_assert!(net.contains(&address), "{} does not hold {}", net, address);
        prop_assert_eq!(parse_net(&address.to_string()).expect("an address parses").prefix_len(), net.max_prefix_len());
    }

    #[test]
    fn any_forwarded_header_gives_an_address_or_none_and_an_untrusted_peer_is_the_client(
        peer in ip_address(),
        hops in prop::collection::vec(prop_oneof![ip_address().prop_map(|a| a.to_string()), "\\PC{0,20}"], 0..5),
        trust_peer in any::<bool>(),
    ) {
        let trusted = if trust_peer { vec![parse_net(&peer.to_string()).expect("an address")] } else { vec![] };
        let header = hops.join(", ");
        let client = client_address(peer, &[header.as_str()], &trusted);
        if !trust_peer {
            prop_assert_eq!(client, Some(peer.to_canonical()));
        }
    }

    #[test]
    fn any_token_is_judged_without_panicking_and_refusals_never_repeat_it(token in "[a-zA-Z0-9 %]{8,30}") {
        if let Err(message) = check_token(&token) {
            prop_assert!(!message.contains(&token), "{}", message);
        }
    }
}

fn ip_address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|bits| IpAddr::V4(Ipv4Addr::from(bits))),
        any::<u128>().prop_map(|bits| IpAddr::V6(Ipv6Addr::from(bits))),
    ]
}

/// The reference configuration: the README's `## Configuration` example, which sets every key.
fn reference_config() -> toml::Table {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("the README is readable");
    let section = readme
        .split("\n## Configuration\n")
        .nth(1)
        .expect("the README has a Configuration section");
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the Configuration section has a TOML example");
    block.parse().expect("the reference config is TOML")
}

/// Every key of `table` that holds a value (not a table of keys), as its path, with that
/// value; `[vars]` is free-form and left out.
fn leaf_keys(table: &toml::Table, prefix: &[String], out: &mut Vec<(Vec<String>, toml::Value)>) {
    for (key, value) in table {
        let mut path = prefix.to_vec();
        path.push(key.clone());
        match value {
            _ if path == ["vars"] => {}
            // An empty inline table (`headers = {}`) is a value of its own.
            toml::Value::Table(inner) if !inner.is_empty() => leaf_keys(inner, &path, out),
            _ => out.push((path, value.clone())),
        }
    }
}

fn reference_keys() -> Vec<(Vec<String>, toml::Value)> {
    let mut keys = Vec::new();
    leaf_keys(&reference_config(), &[], &mut keys);
    assert!(keys.len() > 50, "only {} keys found", keys.len());
    keys
}

/// Values of every TOML type, as TOML source.
fn any_toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "\"[a-z0-9 .:/]{0,12}\"",
        "0|-?[1-9][0-9]{0,11}",
        "-?[1-9][0-9]{0,2}\\.[0-9]{1,3}",
        Just("true".to_owned()),
        Just("false".to_owned()),
        Just("[1, \"a\"]".to_owned()),
        Just("[]".to_owned()),
        Just("{ x = 1 }".to_owned()),
    ]
}

/// Whether `message` is a rule across keys that setting `path` broke, such as
/// `platform.enabled = true` without `platform.base_url`: it names another key of the section.
fn names_a_sibling_rule(message: &str, path: &[String]) -> bool {
    message.starts_with(&format!("{}.", path[0]))
}

fn same_type(a: &toml::Value, b: &toml::Value) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

fn with_value(mut table: toml::Table, path: &[String], value: toml::Value) -> toml::Table {
    let (last, parents) = path.split_last().expect("a key has a name");
    let mut current = &mut table;
    for key in parents {
        current = current[key.as_str()]
            .as_table_mut()
            .expect("a parent of a key is a table");
    }
    current.insert(last.clone(), value);
    table
}

proptest! {
    #![proptest_config(cases())]

    /// Any value for any key of the reference config loads, or is refused naming that key
    /// (with its line, when serde refused it); a value of another type than the reference's is
    /// always refused.
    #[test]
    fn a_wrong_value_for_any_key_is_refused_naming_the_key(
        index in any::<prop::sample::Index>(),
        written in any_toml_value(),
    ) {
        let keys = reference_keys();
        let (path, reference) = &keys[index.index(keys.len())];
        let value: toml::Value = format!("v = {written}").parse::<toml::Table>().expect("TOML")["v"].clone();
        let text = toml::to_string(&with_value(reference_config(), path, value.clone())).expect("serialises");
        let dotted = path.join(".");
        match Config::parse(&text, Path::new("reference.toml"), Vec::new()) {
            Ok(_) => prop_assert!(same_type(reference, &value), "{dotted} = {written} was accepted"),
            Err(error) => {
                let message = error.to_string();
                prop_assert!(
                    message.contains(&dotted) || names_a_sibling_rule(&message, path),
                    "{dotted} = {written}: {message}"
                );
                // With a position, the key named is on the line it gives (a key below this
                // one when the value is a table or a list).
                if let Some(place) = message.strip_prefix("reference.toml:") {
                    let mut parts = place.splitn(3, ": ");
                    let position = parts.next().unwrap_or_default();
                    let named = parts.next().unwrap_or_default();
                    let line: usize = position.split(':').next().and_then(|n| n.parse().ok()).expect("a line number");
                    let written_line = text.lines().nth(line - 1).unwrap_or_default();
                    let last = named.rsplit('.').next().unwrap_or_default().split('[').next().unwrap_or_default();
                    prop_assert!(named.starts_with(&dotted), "{dotted} = {written}: {message}");
                    prop_assert!(written_line.contains(last), "line {line} is {written_line:?}: {message}");
                }
            }
        }
    }

    /// As above, with the value set by its `NOTIROUTER__…` variable: a refusal names the
    /// variable.
    #[test]
    fn a_wrong_override_of_any_key_is_refused_naming_the_variable(
        index in any::<prop::sample::Index>(),
        written in any_toml_value(),
    ) {
        let keys = reference_keys();
        let (path, _) = &keys[index.index(keys.len())];
        let reference = toml::to_string(&reference_config()).expect("serialises");
        let var = format!("NOTIROUTER__{}", path.join("__").to_uppercase());
        if let Err(error) = Config::parse(&reference, Path::new("reference.toml"), vec![(var.clone(), written.clone())]) {
            let message = error.to_string();
            let named = message.contains(&var) && message.contains(&path.join("."));
            prop_assert!(named || names_a_sibling_rule(&message, path), "{var}={written}: {message}");
        }
    }
}
