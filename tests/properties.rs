//! Property tests of the parsing, validation and config paths: any input gives an answer,
//! never a panic, and the duplicate key ignores layout but nothing else. Case counts are
//! bounded so the suite stays fast; `PROPTEST_CASES` raises them for a longer hunt.

use std::path::Path;

use notirouter::config::Config;
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
}
