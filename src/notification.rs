//! The platform's notifications: what a body is, which fields each type must carry, and the
//! canonical form that identifies a re-push.
//!
//! The platform sends no message id and re-pushes the same content after a timeout, so a
//! notification is identified by the SHA-256 of its canonical JSON (keys sorted, no whitespace,
//! numbers as parsed). Field rules follow SPEC.md's validation table; an enumeration value
//! outside the documented list is only ever a warning, because releases add values.

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The `notifyType` given to the NB-IoT command-status push, which carries none of its own.
pub const COMMAND_STATE_CHANGED: &str = "NBCommandStateChanged";

/// How serious a field problem is: `Invalid` fails strict mode, `Unusual` never rejects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Invalid,
    Unusual,
}

/// One field-level finding, reported as `{"field","error"}` in warnings and `meta.problems`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub field: String,
    pub error: String,
    #[serde(skip)]
    pub severity: Severity,
}

impl Problem {
    fn invalid(field: &str, error: impl Into<String>) -> Self {
        Problem {
            field: field.to_owned(),
            error: error.into(),
            severity: Severity::Invalid,
        }
    }

    fn unusual(field: &str, error: impl Into<String>) -> Self {
        Problem {
            field: field.to_owned(),
            error: error.into(),
            severity: Severity::Unusual,
        }
    }
}

/// Why a body cannot be a platform notification at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    #[error("body is JSON but not an object; the platform sends one JSON object per notification")]
    NotObject,
}

/// A body that parsed as a JSON object, with what the receiver derives from it.
#[derive(Debug, Clone)]
pub struct Notification {
    /// The type: the body's `notifyType`, `NBCommandStateChanged` for the command-status shape,
    /// `None` when the body names none (or names it with a non-string).
    pub notify_type: Option<String>,
    pub device_id: Option<String>,
    pub problems: Vec<Problem>,
    /// SHA-256 of the canonical JSON, the duplicate key.
    pub hash: [u8; 32],
}

/// Parses and checks a raw body. Never panics: serde_json bounds nesting depth (128), so a
/// hostile 10,000-deep body is a `NotJson` error rather than a stack overflow.
pub fn parse(body: &[u8]) -> Result<Notification, BodyError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| BodyError::NotJson(e.to_string()))?;
    let Value::Object(object) = &value else {
        return Err(BodyError::NotObject);
    };
    let notify_type = notify_type_of(object);
    let problems = validate(object, notify_type.as_deref());
    let device_id = object
        .get("deviceId")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(Notification {
        notify_type,
        device_id,
        problems,
        hash: canonical_hash(&value),
    })
}

/// A body without `notifyType` that has `commandId` and `result` is the command-status push,
/// whatever path it arrived on (PLATFORM-NOTES.md §3.9).
fn notify_type_of(object: &Map<String, Value>) -> Option<String> {
    match object.get("notifyType") {
        Some(Value::String(name)) => Some(name.clone()),
        Some(_) => None,
        None if object.contains_key("commandId") && object.contains_key("result") => {
            Some(COMMAND_STATE_CHANGED.to_owned())
        }
        None => None,
    }
}

/// What a field must hold.
#[derive(Clone, Copy)]
enum Expect {
    Text,
    TextOrNumber,
    Object,
}

struct Rule {
    field: &'static str,
    expect: Expect,
    /// Documented values; anything else is `Unusual`.
    allowed: &'static [&'static str],
}

const fn text(field: &'static str) -> Rule {
    Rule {
        field,
        expect: Expect::Text,
        allowed: &[],
    }
}

const fn one_of(field: &'static str, allowed: &'static [&'static str]) -> Rule {
    Rule {
        field,
        expect: Expect::Text,
        allowed,
    }
}

const UPGRADE_IDS: [Rule; 4] = [
    text("deviceId"),
    text("appId"),
    text("operationId"),
    text("subOperationId"),
];
const VERSIONS: [Rule; 3] = [
    text("curVersion"),
    text("targetVersion"),
    text("sourceVersion"),
];
const RESULT_VALUES: &[&str] = &["SUCCESS", "FAIL"];
const UPGRADE_TIME: Rule = Rule {
    field: "upgradeTime",
    expect: Expect::TextOrNumber,
    allowed: &[],
};

fn rules_for(notify_type: &str) -> Option<Vec<Rule>> {
    let upgrade_time = UPGRADE_TIME;
    let rules = match notify_type {
        "swUpgradeResultNotify" => {
            let mut rules: Vec<Rule> = UPGRADE_IDS.into_iter().chain(VERSIONS).collect();
            rules.push(one_of("swUpgradeResult", RESULT_VALUES));
            rules.push(upgrade_time);
            rules
        }
        "fwUpgradeResultNotify" => {
            let mut rules: Vec<Rule> = UPGRADE_IDS.into_iter().chain(VERSIONS).collect();
            rules.push(one_of("status", RESULT_VALUES));
            rules
        }
        "swUpgradeStateChangeNotify" => {
            let mut rules: Vec<Rule> = UPGRADE_IDS.into_iter().collect();
            rules.push(one_of(
                "swUpgradeState",
                &["downloading", "downloaded", "updating", "idle"],
            ));
            rules
        }
        "fwUpgradeStateChangeNotify" => {
            let mut rules: Vec<Rule> = UPGRADE_IDS.into_iter().collect();
            rules.push(Rule {
                field: "step",
                expect: Expect::TextOrNumber,
                allowed: &[],
            });
            rules
        }
        COMMAND_STATE_CHANGED => vec![
            text("deviceId"),
            text("commandId"),
            Rule {
                field: "result",
                expect: Expect::Object,
                allowed: &[],
            },
        ],
        _ => return None,
    };
    Some(rules)
}

/// Fields a type may leave out (PLATFORM-NOTES.md §2 lists them, SPEC.md does not require
/// them); when present they must still have their documented type. `errorCode` is one of them
/// unless the upgrade failed (see [`conditional_problems`]).
fn optional_rules_for(notify_type: &str) -> &'static [Rule] {
    const SW_RESULT: [Rule; 2] = [text("resultDesc"), text("description")];
    const FW_RESULT: [Rule; 2] = [text("statusDesc"), UPGRADE_TIME];
    const FW_STATE: [Rule; 1] = [text("stepDesc")];
    match notify_type {
        "swUpgradeResultNotify" => &SW_RESULT,
        "fwUpgradeResultNotify" => &FW_RESULT,
        "fwUpgradeStateChangeNotify" => &FW_STATE,
        _ => &[],
    }
}

fn validate(object: &Map<String, Value>, notify_type: Option<&str>) -> Vec<Problem> {
    let Some(notify_type) = notify_type else {
        let error = match object.get("notifyType") {
            Some(_) => "must be a string naming the notification type",
            None => "missing; the body is neither a typed notification nor a command-status push",
        };
        return vec![Problem::invalid("notifyType", error)];
    };
    let Some(rules) = rules_for(notify_type) else {
        return Vec::new();
    };
    let mut problems: Vec<Problem> = rules
        .iter()
        .filter_map(|rule| check(object, rule))
        .collect();
    problems.extend(
        optional_rules_for(notify_type)
            .iter()
            .filter_map(|rule| check_optional(object, rule)),
    );
    problems.extend(conditional_problems(object, notify_type));
    problems
}

fn check(object: &Map<String, Value>, rule: &Rule) -> Option<Problem> {
    let value = match object.get(rule.field) {
        None => return Some(Problem::invalid(rule.field, "missing")),
        Some(Value::Null) => return Some(Problem::invalid(rule.field, "null")),
        Some(value) => value,
    };
    let well_typed = match rule.expect {
        Expect::Text => value.is_string(),
        Expect::TextOrNumber => value.is_string() || value.is_number(),
        Expect::Object => value.is_object(),
    };
    if !well_typed {
        let expected = match rule.expect {
            Expect::Text => "a string",
            Expect::TextOrNumber => "a string or a number",
            Expect::Object => "an object",
        };
        return Some(Problem::invalid(rule.field, format!("must be {expected}")));
    }
    let text = value.as_str()?;
    (!rule.allowed.is_empty() && !rule.allowed.contains(&text)).then(|| {
        Problem::unusual(
            rule.field,
            format!(
                "undocumented value {text:?}; expected one of {}",
                rule.allowed.join(", ")
            ),
        )
    })
}

/// As [`check`], for a field that may be absent (or null, which says the same).
fn check_optional(object: &Map<String, Value>, rule: &Rule) -> Option<Problem> {
    match object.get(rule.field) {
        None | Some(Value::Null) => None,
        Some(_) => check(object, rule),
    }
}

/// Rules that depend on another field's value.
fn conditional_problems(object: &Map<String, Value>, notify_type: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    let failed = object.get("swUpgradeResult").and_then(Value::as_str) == Some("FAIL");
    if notify_type == "swUpgradeResultNotify" {
        let rule = text("errorCode");
        if !failed {
            problems.extend(check_optional(object, &rule));
        } else if let Some(mut problem) = check(object, &rule) {
            problem
                .error
                .push_str(" (mandatory when swUpgradeResult is FAIL)");
            problems.push(problem);
        }
    }
    if notify_type == COMMAND_STATE_CHANGED
        && let Some(Value::Object(result)) = object.get("result")
    {
        let rule = one_of("resultCode", &["SENT", "DELIVERED", "SUCCESS", "FAIL"]);
        problems.extend(check(result, &rule).map(|mut problem| {
            problem.field = "result.resultCode".to_owned();
            problem.severity = Severity::Unusual;
            problem
        }));
    }
    problems
}

/// SHA-256 of the canonical JSON: keys sorted by their UTF-8 bytes, no whitespace, numbers
/// written as serde_json parsed them. Sorting is done here rather than relied on from
/// serde_json's map type, which a dependency's `preserve_order` feature would silently change.
pub fn canonical_hash(value: &Value) -> [u8; 32] {
    let mut hasher = Sha256::new();
    write_canonical(value, &mut hasher);
    hasher.finalize().into()
}

fn write_canonical(value: &Value, out: &mut Sha256) {
    match value {
        Value::Object(object) => {
            let mut entries: Vec<(&String, &Value)> = object.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.update(b"{");
            for (index, (key, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.update(b",");
                }
                out.update(Value::String(key.clone()).to_string().as_bytes());
                out.update(b":");
                write_canonical(item, out);
            }
            out.update(b"}");
        }
        Value::Array(items) => {
            out.update(b"[");
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.update(b",");
                }
                write_canonical(item, out);
            }
            out.update(b"]");
        }
        scalar => out.update(scalar.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sw_fail() -> Value {
        serde_json::json!({
            "notifyType": "swUpgradeResultNotify", "deviceId": "d1", "appId": "a",
            "operationId": "o", "subOperationId": "s", "curVersion": "1.3",
            "targetVersion": "1.5", "sourceVersion": "1.3", "swUpgradeResult": "FAIL",
            "upgradeTime": "120", "errorCode": "7"
        })
    }

    fn parse_value(value: &Value) -> Notification {
        parse(value.to_string().as_bytes()).expect("test bodies are JSON objects")
    }

    fn fields(notification: &Notification) -> Vec<&str> {
        notification
            .problems
            .iter()
            .map(|p| p.field.as_str())
            .collect()
    }

    #[test]
    fn a_complete_software_failure_has_no_problems() {
        let notification = parse_value(&sw_fail());
        assert_eq!(
            notification.notify_type.as_deref(),
            Some("swUpgradeResultNotify")
        );
        assert_eq!(notification.device_id.as_deref(), Some("d1"));
        assert!(
            notification.problems.is_empty(),
            "{:?}",
            notification.problems
        );
    }

    #[test]
    fn error_code_is_mandatory_only_on_failure() {
        let mut body = sw_fail();
        body.as_object_mut().unwrap().remove("errorCode");
        assert_eq!(fields(&parse_value(&body)), ["errorCode"]);
        body["swUpgradeResult"] = "SUCCESS".into();
        assert!(parse_value(&body).problems.is_empty());
    }

    #[test]
    fn missing_null_and_mistyped_fields_are_invalid() {
        let mut body = sw_fail();
        body.as_object_mut().unwrap().remove("appId");
        body["operationId"] = Value::Null;
        body["curVersion"] = 13.into();
        let notification = parse_value(&body);
        assert_eq!(
            fields(&notification),
            ["appId", "operationId", "curVersion"]
        );
        assert!(
            notification
                .problems
                .iter()
                .all(|p| p.severity == Severity::Invalid)
        );
        assert_eq!(notification.problems[2].error, "must be a string");
    }

    #[test]
    fn optional_string_fields_must_be_strings_when_present() {
        let mut body = sw_fail();
        body["resultDesc"] = 12345.into();
        body["description"] = true.into();
        assert_eq!(fields(&parse_value(&body)), ["resultDesc", "description"]);
        body["resultDesc"] = Value::Null;
        body.as_object_mut().unwrap().remove("description");
        assert!(parse_value(&body).problems.is_empty());
        let firmware = serde_json::json!({
            "notifyType": "fwUpgradeResultNotify", "deviceId": "d", "appId": "a",
            "operationId": "o", "subOperationId": "s", "curVersion": "1", "targetVersion": "2",
            "sourceVersion": "1", "status": "FAIL", "statusDesc": []
        });
        let notification = parse_value(&firmware);
        assert_eq!(fields(&notification), ["statusDesc"]);
        assert_eq!(notification.problems[0].severity, Severity::Invalid);
    }

    #[test]
    fn upgrade_time_and_step_may_be_numbers() {
        let mut body = sw_fail();
        body["upgradeTime"] = 120.into();
        assert!(parse_value(&body).problems.is_empty());
        let state = serde_json::json!({
            "notifyType": "fwUpgradeStateChangeNotify", "deviceId": "d", "appId": "a",
            "operationId": "o", "subOperationId": "s", "step": 2
        });
        assert!(parse_value(&state).problems.is_empty());
    }

    #[test]
    fn undocumented_enumeration_values_are_only_unusual() {
        let mut body = sw_fail();
        body["swUpgradeResult"] = "FAILED".into();
        let notification = parse_value(&body);
        assert_eq!(fields(&notification), ["swUpgradeResult"]);
        assert_eq!(notification.problems[0].severity, Severity::Unusual);
    }

    #[test]
    fn firmware_results_use_status_and_need_no_error_code() {
        let body = serde_json::json!({
            "notifyType": "fwUpgradeResultNotify", "deviceId": "d", "appId": "a",
            "operationId": "o", "subOperationId": "s", "curVersion": "V1", "targetVersion": "V2",
            "sourceVersion": "V1", "status": "FAIL", "statusDesc": "FAIL", "upgradeTime": "300"
        });
        assert!(parse_value(&body).problems.is_empty());
    }

    #[test]
    fn command_status_is_recognised_by_shape() {
        let body = serde_json::json!({
            "deviceId": "d", "commandId": "c", "result": {"resultCode": "TIMEOUT"}
        });
        let notification = parse_value(&body);
        assert_eq!(
            notification.notify_type.as_deref(),
            Some(COMMAND_STATE_CHANGED)
        );
        assert_eq!(fields(&notification), ["result.resultCode"]);
        assert_eq!(notification.problems[0].severity, Severity::Unusual);
    }

    #[test]
    fn untyped_bodies_and_non_string_types_are_invalid() {
        let untyped = parse_value(&serde_json::json!({"deviceId": "d"}));
        assert_eq!(untyped.notify_type, None);
        assert_eq!(fields(&untyped), ["notifyType"]);
        let numeric = parse_value(&serde_json::json!({"notifyType": 7}));
        assert_eq!(numeric.notify_type, None);
        assert_eq!(
            numeric.problems[0].error,
            "must be a string naming the notification type"
        );
    }

    #[test]
    fn unknown_types_are_accepted_without_problems() {
        let notification = parse_value(&serde_json::json!({"notifyType": "deviceAdded"}));
        assert_eq!(notification.notify_type.as_deref(), Some("deviceAdded"));
        assert!(notification.problems.is_empty());
    }

    #[test]
    fn bodies_that_are_not_objects_are_refused() {
        assert_eq!(parse(b"[1,2]").unwrap_err(), BodyError::NotObject);
        assert!(matches!(
            parse(b"{\"a\":").unwrap_err(),
            BodyError::NotJson(_)
        ));
        assert!(matches!(
            parse(b"{\"a\":\"\xff\"}").unwrap_err(),
            BodyError::NotJson(_)
        ));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(
            parse(deep.as_bytes()).unwrap_err(),
            BodyError::NotJson(_)
        ));
    }

    #[test]
    fn canonical_hash_ignores_layout_and_key_order_but_not_values() {
        let a = parse(br#"{"b":1,"a":{"y":[1,2],"x":"s"}}"#).unwrap();
        let b = parse(b"{ \"a\" : { \"x\":\"s\", \"y\":[1, 2] },\n \"b\" : 1 }").unwrap();
        let c = parse(br#"{"b":2,"a":{"y":[1,2],"x":"s"}}"#).unwrap();
        let d = parse(br#"{"b":1,"a":{"y":[2,1],"x":"s"}}"#).unwrap();
        assert_eq!(a.hash, b.hash);
        assert_ne!(a.hash, c.hash);
        assert_ne!(a.hash, d.hash);
    }

    #[test]
    fn canonical_form_is_the_sorted_compact_json() {
        let value: Value = serde_json::from_str(r#"{"b":[1,2.5,"é"],"a":null}"#).unwrap();
        let expected: [u8; 32] =
            Sha256::digest("{\"a\":null,\"b\":[1,2.5,\"é\"]}".as_bytes()).into();
        assert_eq!(canonical_hash(&value), expected);
    }
}
