//! Turning serde's value errors into messages that name the key and say what it should hold.
//!
//! The TOML deserializer reports where a value is wrong (a byte span) and what serde expected
//! ("invalid value: string \"soon\", expected a duration"), but not which key holds it. The key
//! is found by parsing the same text with spans and looking up the value at that offset; the
//! message is rewritten from the value as written and a description of what is expected.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// Keys whose values must not be repeated in a message, whatever their type.
const SECRET_KEYS: &[&str] = &["secret", "token", "app_id", "smtp_url", "url"];
/// The longest stretch of a wrong value repeated in a message.
const QUOTED_MAX: usize = 60;

/// `serde_message` (from a deserializer error at `span` of `text`) as
/// `key: what is wrong`, or unchanged when the key cannot be found or the message already
/// names what it is about (an unknown key, a syntax error).
pub(super) fn explain(text: &str, span: &Range<usize>, serde_message: &str) -> String {
    if serde_message.starts_with("unknown field") {
        return serde_message.to_owned();
    }
    let Some(key) = key_at(text, span.start) else {
        return serde_message.to_owned();
    };
    let written = text
        .get(span.clone())
        .map(str::trim)
        .filter(|written| !written.is_empty());
    let secret = key
        .rsplit('.')
        .next()
        .is_some_and(|last| SECRET_KEYS.contains(&last));
    let found = match (written, secret) {
        (Some(written), false) => quoted(written),
        _ => "the value".to_owned(),
    };
    format!("{key}: {}", describe(serde_message, &found))
}

/// What is wrong, in the operator's words: `"soon" is not a duration (e.g. ...)`.
fn describe(serde_message: &str, found: &str) -> String {
    let mismatch = serde_message
        .strip_prefix("invalid value: ")
        .or_else(|| serde_message.strip_prefix("invalid type: "));
    if let Some((_, expected)) = mismatch.and_then(|rest| rest.rsplit_once(", expected ")) {
        return format!("{found} is not {}", expected_value(expected));
    }
    if serde_message == "wanted string or table" {
        return format!("{found} is not a string; write one of the documented values in quotes");
    }
    serde_message.to_owned()
}

/// serde's name for what it expected, as an operator would write it.
fn expected_value(expected: &str) -> String {
    let whole = |max: u64| format!("a whole number from 0 to {max}");
    match expected {
        "a duration" => "a duration (e.g. \"500ms\", \"2s\", \"5m\")".to_owned(),
        "u8" => whole(u8::MAX.into()),
        "u16" => whole(u16::MAX.into()),
        "u32" => whole(u32::MAX.into()),
        "u64" | "usize" => whole(u64::MAX),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".to_owned(),
        "f32" | "f64" => "a number".to_owned(),
        "a boolean" => "true or false".to_owned(),
        "a string" => "a string (in quotes)".to_owned(),
        "a sequence" => "a list such as [\"a\", \"b\"]".to_owned(),
        "a map" | "struct" => "a table".to_owned(),
        other => other.to_owned(),
    }
}

fn quoted(written: &str) -> String {
    match written.char_indices().nth(QUOTED_MAX) {
        Some((end, _)) => format!("{}…", &written[..end]),
        None => written.to_owned(),
    }
}

/// The dotted key (`delivery.backoff_initial`, `server.paths[1]`) of the innermost value at
/// byte `offset` of `text`, or of the table there (for a missing key).
pub(super) fn key_at(text: &str, offset: usize) -> Option<String> {
    let document = DeTable::parse(text).ok()?;
    let path = path_in_table(document.get_ref(), offset)?;
    Some(path.concat())
}

/// The path segments to `offset` within `table`: `["delivery", ".backoff_initial"]` (the
/// first bare, the others with their `.` or `[i]`).
fn path_in_table(table: &DeTable<'_>, offset: usize) -> Option<Vec<String>> {
    table.iter().find_map(|(key, value)| {
        let name = key.get_ref();
        let segment = match name.contains(['.', ' ', '"']) || name.is_empty() {
            true => format!("{name:?}"),
            false => name.to_string(),
        };
        let mut path = vec![segment];
        // At the key itself: a table given where a value was expected reports its first key.
        if !key.span().contains(&offset) {
            path.extend(path_in_value(value.get_ref(), value.span(), offset)?);
        }
        Some(path)
    })
}

/// The segments below a value spanning `span` to `offset`; empty when `offset` is the value
/// itself, `None` when it is elsewhere.
fn path_in_value(value: &DeValue<'_>, span: Range<usize>, offset: usize) -> Option<Vec<String>> {
    let inner = match value {
        DeValue::Table(table) => path_in_table(table, offset).map(|mut path| {
            path[0] = format!(".{}", path[0]);
            path
        }),
        DeValue::Array(items) => items.iter().enumerate().find_map(|(index, item)| {
            let mut path = vec![format!("[{index}]")];
            path.extend(path_in_value(item.get_ref(), item.span(), offset)?);
            Some(path)
        }),
        _ => None,
    };
    inner.or_else(|| span.contains(&offset).then(Vec::new))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explain_at(text: &str, needle: &str, message: &str) -> String {
        let start = text.find(needle).expect("the needle is in the text");
        explain(text, &(start..start + needle.len()), message)
    }

    #[test]
    fn keys_are_found_in_sections_inline_tables_and_lists() {
        let text =
            "[server]\npaths = [\"/a\", 7]\n[channels.ops]\nkind = \"log\"\nheaders = { x = 1 }\n";
        assert_eq!(
            key_at(text, text.find('7').unwrap()).as_deref(),
            Some("server.paths[1]")
        );
        assert_eq!(
            key_at(text, text.find("\"log\"").unwrap()).as_deref(),
            Some("channels.ops.kind")
        );
        assert_eq!(
            key_at(text, text.find('1').unwrap()).as_deref(),
            Some("channels.ops.headers.x")
        );
        let packages = "[platform.packages]\n\"1.5\" = 3\n";
        assert_eq!(
            key_at(packages, packages.find('3').unwrap()).as_deref(),
            Some("platform.packages.\"1.5\"")
        );
    }

    #[test]
    fn value_errors_name_the_key_and_what_it_should_hold() {
        let text = "[delivery]\nbackoff_initial = \"soon\"\n";
        assert_eq!(
            explain_at(
                text,
                "\"soon\"",
                "invalid value: string \"soon\", expected a duration"
            ),
            "delivery.backoff_initial: \"soon\" is not a duration (e.g. \"500ms\", \"2s\", \"5m\")"
        );
        let text = "[scripts]\nworkers = -1\n";
        assert_eq!(
            explain_at(text, "-1", "invalid value: integer `-1`, expected usize"),
            format!(
                "scripts.workers: -1 is not a whole number from 0 to {}",
                u64::MAX
            )
        );
    }

    #[test]
    fn secrets_are_not_repeated() {
        let text = "[platform]\nsecret = 123456789\n";
        let message = explain_at(
            text,
            "123456789",
            "invalid type: integer `123456789`, expected a string",
        );
        assert_eq!(
            message,
            "platform.secret: the value is not a string (in quotes)"
        );
    }
}
