//! The built-in bindings of SPEC.md's "Scripts" section. Action bindings only append to the
//! current run; none does I/O. Every binding checks its arguments itself, so that a wrong type
//! is an error naming the binding and its signatures rather than rhai's "function not found".

use std::time::Duration;

use rhai::{Dynamic, Engine, EvalAltResult, Map};
use serde_json::Value;

use super::run::{self, RunContext};
use crate::action::{Action, ActionSpec, Chat, Email, PlatformOp, Webhook};
use crate::campaign::{Report, Upgrade};
use crate::config::ChannelKind;
use crate::model::Millis;
use crate::model::state::DigestKey;

type Outcome<T> = Result<T, Box<EvalAltResult>>;

/// Each binding's signatures, as error messages show them.
pub(crate) const SIGNATURES: &[(&str, &str)] = &[
    (
        "email",
        "email(to, subject, body) or email(#{to, cc, subject, body, html})",
    ),
    ("slack", "slack(channel, text) or slack(channel, #{...})"),
    ("webhook", "webhook(channel_or_url, payload)"),
    (
        "retry_upgrade",
        "retry_upgrade(n) or retry_upgrade(n, #{file_id, execute_type, retry_type, retry_times, start_time, end_time})",
    ),
    ("upgrade_retries", "upgrade_retries(n)"),
    ("upgrade_failed", "upgrade_failed(n)"),
    (
        "seen",
        "seen(key, ttl) with ttl a duration string such as \"10m\"",
    ),
    (
        "count",
        "count(key, window) with window a duration string such as \"1h\"",
    ),
    (
        "digest",
        "digest(key, window, item) with window a duration string such as \"10m\" and item a string or map",
    ),
    ("campaign", "campaign(n)"),
    ("log", "log(msg) or log(level, msg)"),
];

fn signature(binding: &str) -> &'static str {
    SIGNATURES
        .iter()
        .find(|(name, _)| *name == binding)
        .map_or("", |(_, signature)| signature)
}

fn wrong_arguments(binding: &str, arguments: &[&Dynamic]) -> String {
    let types: Vec<&str> = arguments.iter().map(|a| a.type_name()).collect();
    format!(
        "wrong arguments ({}); expected {}",
        types.join(", "),
        signature(binding)
    )
}

pub(crate) fn register(engine: &mut Engine) {
    engine.register_fn("email", |to: Dynamic, subject: Dynamic, body: Dynamic| {
        email_from_parts(&to, &subject, &body)
    });
    engine.register_fn("email", |options: Dynamic| email_from_map(&options));
    engine.register_fn("slack", |channel: Dynamic, message: Dynamic| {
        chat(&channel, &message)
    });
    engine.register_fn("webhook", |target: Dynamic, payload: Dynamic| {
        webhook(&target, &payload)
    });
    engine.register_fn("retry_upgrade", |n: Dynamic| {
        retry_upgrade(&n, &Dynamic::from(Map::new()))
    });
    engine.register_fn("retry_upgrade", |n: Dynamic, options: Dynamic| {
        retry_upgrade(&n, &options)
    });
    engine.register_fn("upgrade_retries", |n: Dynamic| upgrade_retries(&n));
    engine.register_fn("upgrade_failed", |n: Dynamic| upgrade_failed(&n));
    engine.register_fn("seen", |key: Dynamic, ttl: Dynamic| seen(&key, &ttl));
    engine.register_fn("count", |key: Dynamic, window: Dynamic| {
        count(&key, &window)
    });
    engine.register_fn("digest", |key: Dynamic, window: Dynamic, item: Dynamic| {
        digest(&key, &window, &item)
    });
    engine.register_fn("campaign", |n: Dynamic| campaign(&n));
    engine.register_fn("log", |message: Dynamic| {
        log(&Dynamic::from("info"), &message)
    });
    engine.register_fn("log", |level: Dynamic, message: Dynamic| {
        log(&level, &message)
    });
}

fn text(value: &Dynamic) -> Option<String> {
    value.clone().into_string().ok()
}

/// A string or an array of strings.
fn addresses(value: &Dynamic) -> Option<Vec<String>> {
    if let Some(one) = text(value) {
        return Some(vec![one]);
    }
    value
        .clone()
        .into_typed_array::<rhai::ImmutableString>()
        .ok()
        .map(|all| all.into_iter().map(|address| address.to_string()).collect())
}

fn queue(
    binding: &str,
    build: impl FnOnce(&RunContext) -> Result<ActionSpec, String>,
) -> Outcome<()> {
    run::current(binding, |run| {
        let spec = build(run)?;
        run.actions.push(Action {
            plugin: run.plugin.clone(),
            spec,
        });
        Ok(())
    })
}

fn email_from_parts(to: &Dynamic, subject: &Dynamic, body: &Dynamic) -> Outcome<()> {
    let parts = (addresses(to), text(subject), text(body));
    let (Some(to), Some(subject), Some(body)) = parts else {
        return Err(format!("email: {}", wrong_arguments("email", &[to, subject, body])).into());
    };
    queue("email", |_| {
        Ok(ActionSpec::Email(Email {
            to,
            cc: Vec::new(),
            subject,
            body,
            html: None,
        }))
    })
}

fn email_from_map(options: &Dynamic) -> Outcome<()> {
    let Some(map) = options.read_lock::<Map>() else {
        return Err(format!("email: {}", wrong_arguments("email", &[options])).into());
    };
    let field = |name: &str| map.get(name).cloned();
    let optional_text = |name: &str| -> Result<Option<String>, String> {
        match field(name) {
            None => Ok(None),
            Some(value) if value.is_unit() => Ok(None),
            Some(value) => text(&value)
                .map(Some)
                .ok_or_else(|| format!("`{name}` must be a string")),
        }
    };
    let build = || -> Result<ActionSpec, String> {
        let to = field("to")
            .as_ref()
            .and_then(addresses)
            .ok_or("`to` must be a string or an array of strings")?;
        let cc = match field("cc") {
            None => Vec::new(),
            Some(cc) => addresses(&cc).ok_or("`cc` must be a string or an array of strings")?,
        };
        let subject = optional_text("subject")?.ok_or("`subject` is required")?;
        let body = optional_text("body")?.ok_or("`body` is required")?;
        Ok(ActionSpec::Email(Email {
            to,
            cc,
            subject,
            body,
            html: optional_text("html")?,
        }))
    };
    let spec =
        build().map_err(|message| format!("email: {message}; expected {}", signature("email")))?;
    queue("email", |_| Ok(spec))
}

fn chat(channel: &Dynamic, message: &Dynamic) -> Outcome<()> {
    let Some(channel) = text(channel) else {
        return Err(format!("slack: {}", wrong_arguments("slack", &[channel, message])).into());
    };
    let (text, payload) = if let Some(text) = text(message) {
        (Some(text), None)
    } else if message.is_map() {
        (None, Some(to_json("slack", message)?))
    } else {
        return Err(format!(
            "slack: {}",
            wrong_arguments("slack", &[&Dynamic::from(channel), message])
        )
        .into());
    };
    queue("slack", |run| {
        if !run.settings.channels.contains_key(&channel) {
            return Err(unknown_channel(&channel, run));
        }
        Ok(ActionSpec::Chat(Chat {
            channel,
            text,
            payload,
        }))
    })
}

fn webhook(target: &Dynamic, payload: &Dynamic) -> Outcome<()> {
    let Some(target) = text(target) else {
        return Err(format!(
            "webhook: {}",
            wrong_arguments("webhook", &[target, payload])
        )
        .into());
    };
    let payload = to_json("webhook", payload)?;
    queue("webhook", |run| {
        let is_url = target.starts_with("https://") || target.starts_with("http://");
        let (channel, url) = match run.settings.channels.get(&target) {
            Some(ChannelKind::Webhook) => (Some(target), None),
            Some(kind) => {
                return Err(format!(
                    "channel {target:?} is of kind {kind}, not webhook; use slack(channel, ...) for chat channels"
                ));
            }
            None if is_url => {
                reqwest::Url::parse(&target)
                    .map_err(|e| format!("{target:?} is not a valid URL: {e}"))?;
                (None, Some(target))
            }
            None => return Err(unknown_channel(&target, run)),
        };
        Ok(ActionSpec::Webhook(Webhook {
            channel,
            url,
            payload,
        }))
    })
}

fn unknown_channel(name: &str, run: &RunContext) -> String {
    let known: Vec<&str> = run.settings.channels.keys().map(String::as_str).collect();
    format!(
        "unknown channel {name:?}; configured channels: {}",
        if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        }
    )
}

fn to_json(binding: &str, value: &Dynamic) -> Outcome<Value> {
    rhai::serde::from_dynamic(value)
        .map_err(|error| format!("{binding}: the payload cannot be sent as JSON: {error}").into())
}

/// The fields of an upgrade result that the upgrade bindings need.
struct UpgradeResult {
    notify_type: String,
    device_id: String,
    target_version: String,
    failed: bool,
}

fn upgrade_result(binding: &str, n: &Dynamic) -> Outcome<Option<UpgradeResult>> {
    let Some(map) = n.read_lock::<Map>() else {
        return Err(format!("{binding}: {}", wrong_arguments(binding, &[n])).into());
    };
    let field = |name: &str| map.get(name).and_then(text);
    let result_field = match field("notifyType").as_deref() {
        Some("swUpgradeResultNotify") => "swUpgradeResult",
        Some("fwUpgradeResultNotify") => "status",
        _ => return Ok(None),
    };
    let (Some(device_id), Some(target_version)) = (field("deviceId"), field("targetVersion"))
    else {
        return Err(format!(
            "{binding}: the notification has no string deviceId and targetVersion"
        )
        .into());
    };
    Ok(Some(UpgradeResult {
        notify_type: field("notifyType").unwrap_or_default(),
        device_id,
        target_version,
        failed: field(result_field).as_deref() == Some("FAIL"),
    }))
}

fn upgrade_failed(n: &Dynamic) -> Outcome<bool> {
    Ok(upgrade_result("upgrade_failed", n)?.is_some_and(|result| result.failed))
}

fn upgrade_retries(n: &Dynamic) -> Outcome<i64> {
    let Some(result) = upgrade_result("upgrade_retries", n)? else {
        return Ok(0);
    };
    run::current("upgrade_retries", |run| {
        let window = run.settings.platform.retry_budget_window;
        run.with_state(|state| state.budget_used(&result.device_id, &result.target_version, window))
    })
}

fn retry_upgrade(n: &Dynamic, options: &Dynamic) -> Outcome<bool> {
    let Some(result) = upgrade_result("retry_upgrade", n)? else {
        return Err(
            "retry_upgrade: the notification is not a software or firmware upgrade result".into(),
        );
    };
    let Some(options) = options.read_lock::<Map>().map(|map| map.clone()) else {
        return Err(format!(
            "retry_upgrade: {}",
            wrong_arguments("retry_upgrade", &[n, options])
        )
        .into());
    };
    let options = RetryOptions::parse(&options).map_err(|message| {
        format!(
            "retry_upgrade: {message}; expected {}",
            signature("retry_upgrade")
        )
    })?;
    run::current("retry_upgrade", |run| {
        let platform = &run.settings.platform;
        if !platform.enabled {
            tracing::info!(plugin = %run.plugin, event_id = %run.event_id, "retry_upgrade: the platform is disabled; nothing queued");
            return Ok(false);
        }
        let (window, limit) = (platform.retry_budget_window, platform.max_upgrade_retries);
        let file_id = options
            .file_id
            .or_else(|| platform.packages.get(&result.target_version).cloned());
        let (device, version) = (&result.device_id, &result.target_version);
        let taken = run.with_state(|state| {
            let available = state.budget_used(device, version, window)? < limit;
            if available {
                state.take_budget(device, version, window)?;
            }
            Ok(available)
        })?;
        if !taken {
            return Ok(false);
        }
        run.actions.push(Action {
            plugin: run.plugin.clone(),
            spec: ActionSpec::Platform(PlatformOp {
                file_id,
                execute_type: options.execute_type,
                retry_type: options.retry_type,
                retry_times: options.retry_times,
                start_time: options.start_time,
                end_time: options.end_time,
                ..PlatformOp::retry_upgrade(
                    &result.device_id,
                    &result.notify_type,
                    &result.target_version,
                )
            }),
        });
        Ok(true)
    })
}

struct RetryOptions {
    file_id: Option<String>,
    execute_type: String,
    retry_type: Option<bool>,
    retry_times: Option<i64>,
    start_time: Option<String>,
    end_time: Option<String>,
}

impl RetryOptions {
    fn parse(options: &Map) -> Result<RetryOptions, String> {
        const KNOWN: &[&str] = &[
            "file_id",
            "execute_type",
            "retry_type",
            "retry_times",
            "start_time",
            "end_time",
        ];
        if let Some(unknown) = options.keys().find(|key| !KNOWN.contains(&key.as_str())) {
            return Err(format!("unknown option `{unknown}`"));
        }
        let string = |name: &str| -> Result<Option<String>, String> {
            options
                .get(name)
                .map(|v| text(v).ok_or_else(|| format!("`{name}` must be a string")))
                .transpose()
        };
        let execute_type = string("execute_type")?.unwrap_or_else(|| "now".to_owned());
        if !["now", "device_online", "custom"].contains(&execute_type.as_str()) {
            return Err(format!(
                "`execute_type` must be \"now\", \"device_online\" or \"custom\", not {execute_type:?}"
            ));
        }
        let retry_type = options
            .get("retry_type")
            .map(|v| {
                v.as_bool()
                    .map_err(|_| "`retry_type` must be true or false".to_owned())
            })
            .transpose()?;
        let retry_times = options
            .get("retry_times")
            .map(|v| {
                v.as_int()
                    .map_err(|_| "`retry_times` must be an integer from 1 to 5".to_owned())
            })
            .transpose()?;
        if retry_times.is_some_and(|times| !(1..=5).contains(&times)) {
            return Err("`retry_times` must be an integer from 1 to 5".to_owned());
        }
        Ok(RetryOptions {
            file_id: string("file_id")?,
            execute_type,
            retry_type,
            retry_times,
            start_time: string("start_time")?,
            end_time: string("end_time")?,
        })
    }
}

fn duration(binding: &str, value: &Dynamic, arguments: &[&Dynamic]) -> Result<Duration, String> {
    let text = text(value).ok_or_else(|| wrong_arguments(binding, arguments))?;
    humantime::parse_duration(&text).map_err(|error| {
        format!(
            "{text:?} is not a duration ({error}); expected {}",
            signature(binding)
        )
    })
}

fn seen(key: &Dynamic, ttl: &Dynamic) -> Outcome<bool> {
    let parsed = text(key)
        .ok_or_else(|| wrong_arguments("seen", &[key, ttl]))
        .and_then(|key| Ok((key, duration("seen", ttl, &[&Dynamic::from(""), ttl])?)));
    let (key, ttl) = parsed.map_err(|message| format!("seen: {message}"))?;
    run::current("seen", |run| run.with_state(|state| state.seen(&key, ttl)))
}

fn count(key: &Dynamic, window: &Dynamic) -> Outcome<i64> {
    let parsed = text(key)
        .ok_or_else(|| wrong_arguments("count", &[key, window]))
        .and_then(|key| {
            Ok((
                key,
                duration("count", window, &[&Dynamic::from(""), window])?,
            ))
        });
    let (key, window) = parsed.map_err(|message| format!("count: {message}"))?;
    run::current("count", |run| {
        run.with_state(|state| state.count(&key, window))
    })
}

fn digest(key: &Dynamic, window: &Dynamic, item: &Dynamic) -> Outcome<()> {
    let arguments = [key, window, item];
    let parsed = match (text(key), item.is_string() || item.is_map()) {
        (Some(key), true) => duration("digest", window, &arguments).map(|window| (key, window)),
        _ => Err(wrong_arguments("digest", &arguments)),
    };
    let (key, window) = parsed.map_err(|message| format!("digest: {message}"))?;
    let item = to_json("digest", item)?.to_string();
    run::current("digest", |run| {
        let key = DigestKey {
            plugin: run.plugin.clone(),
            key,
        };
        run.changes.add_to_digest(key, window, item, run.now);
        Ok(())
    })
}

fn campaign(n: &Dynamic) -> Outcome<Dynamic> {
    let not_a_result = || -> Box<EvalAltResult> {
        "campaign: the notification is not a software or firmware upgrade result (with deviceId, operationId and targetVersion)".into()
    };
    let Some(map) = n.read_lock::<Map>() else {
        return Err(format!("campaign: {}", wrong_arguments("campaign", &[n])).into());
    };
    let field = |name: &str| map.get(name).and_then(text);
    let notify_type = field("notifyType").unwrap_or_default();
    let result = Upgrade::from_fields(&notify_type, field, Millis::now())
        .filter(|upgrade| upgrade.campaign().is_some())
        .ok_or_else(not_a_result)?;
    let key = result.campaign().expect("filtered above");
    let report = run::current("campaign", |run| {
        let report = run.committed.campaigns.report(&result, &run.event_id);
        report.map_err(|failure| {
            let message = failure.to_string();
            run.state_failure = Some(failure);
            message
        })
    })?;
    rhai::serde::to_dynamic(report.unwrap_or_else(|| Report::empty(&key)))
}

fn log(level: &Dynamic, message: &Dynamic) -> Outcome<()> {
    let Some(level) = text(level) else {
        return Err(format!("log: {}", wrong_arguments("log", &[level, message])).into());
    };
    let message = text(message).unwrap_or_else(|| message.to_string());
    let (plugin, event_id) = run::tags();
    match level.to_ascii_lowercase().as_str() {
        "error" => tracing::error!(%plugin, %event_id, "{message}"),
        "warn" | "warning" => tracing::warn!(%plugin, %event_id, "{message}"),
        "info" => tracing::info!(%plugin, %event_id, "{message}"),
        "debug" => tracing::debug!(%plugin, %event_id, "{message}"),
        "trace" => tracing::trace!(%plugin, %event_id, "{message}"),
        other => {
            return Err(format!(
                "log: unknown level {other:?}; expected error, warn, info, debug or trace"
            )
            .into());
        }
    }
    Ok(())
}
