//! `subscribe`: registers the callback URL at the platform, one call per notification type,
//! and prints what the platform answered for each. Exit 1 when the platform refused a type,
//! 2 when nothing could be asked (config, credentials, network, certificates).

use std::process::ExitCode;

use anyhow::Context;

use crate::config::Config;
use crate::platform::{Platform, PlatformError, Subscribed, UPGRADE_TYPES};
use crate::store::{self, Opener, StoreError};

/// Command status is pushed to the URL of each create-command call, never subscribed.
const NOT_SUBSCRIBABLE: &str = "NBCommandStateChanged";

pub fn run(config: &Config, callback_url: &str, types: Vec<String>) -> anyhow::Result<ExitCode> {
    let url = reqwest::Url::parse(callback_url)
        .ok()
        .filter(|url| ["http", "https"].contains(&url.scheme()));
    if url.is_none() {
        anyhow::bail!(
            "--callback-url {callback_url:?} is not an http(s) URL such as \
             \"https://203.0.113.7:8443/v1.0.0/messageReceiver\""
        );
    }
    let types = match types.is_empty() {
        true => UPGRADE_TYPES.map(str::to_owned).to_vec(),
        false => types,
    };
    let platform = platform_client(config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let refused = runtime.block_on(subscribe_all(&platform, callback_url, &types))?;
    Ok(match refused {
        0 => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

/// A client that shares the serving instances' token through the store, so that its login
/// does not revoke theirs (PLATFORM-NOTES.md §4.4); on its own before the first `serve`.
fn platform_client(config: &Config) -> anyhow::Result<Platform> {
    let (platform, timeout) = (&config.platform, config.delivery.timeout);
    let client = match store::open(&config.store, Opener::Command) {
        Ok(store) => Platform::sharing(platform, timeout, store),
        Err(StoreError::Missing { .. }) => Platform::new(platform, timeout),
        Err(error) => {
            return Err(error).context("cannot open the store to share the platform token");
        }
    };
    client.context("cannot use the [platform] section")
}

/// Subscribes each type in turn; returns how many the platform refused.
async fn subscribe_all(
    platform: &Platform,
    callback_url: &str,
    types: &[String],
) -> anyhow::Result<usize> {
    let mut refused = 0;
    for notify_type in types {
        if notify_type == NOT_SUBSCRIBABLE {
            eprintln!(
                "{notify_type}: not subscribable; the platform pushes command status to the \
                 callbackUrl of each create-command request"
            );
            refused += 1;
            continue;
        }
        match platform.subscribe(notify_type, callback_url).await {
            Ok(answer) => println!("{notify_type}: {}", describe(&answer)),
            Err(error @ PlatformError::Refused { .. }) => {
                eprintln!("{notify_type}: {error}");
                refused += 1;
            }
            Err(error) => {
                return Err(error).with_context(|| {
                    format!("cannot subscribe {notify_type} at {}", platform.base_url())
                });
            }
        }
    }
    Ok(refused)
}

fn describe(answer: &Subscribed) -> String {
    match answer {
        Subscribed::Created {
            status,
            subscription_id: Some(id),
        } => format!("subscribed (HTTP {status}, subscriptionId {id})"),
        Subscribed::Created { status, .. } => format!("subscribed (HTTP {status})"),
        Subscribed::Already { code } => format!("already subscribed (error {code})"),
    }
}
