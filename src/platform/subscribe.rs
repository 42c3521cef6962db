//! Subscriptions: which URL the platform pushes each notification type to. The four upgrade
//! types are management data (PLATFORM-NOTES.md §4.8, one call per type, `200` and no body);
//! every other type is service data (§4.9, `201` with a `subscriptionId`).

use reqwest::Method;
use serde_json::json;

use super::client::{Body, Call};
use super::errors::ALREADY_SUBSCRIBED;
use super::{Platform, PlatformError};

const MANAGEMENT: &str = "/iodm/app/sub/v1.1.0/subscribe";
const SERVICE: &str = "/iocm/app/sub/v1.2.0/subscriptions";
/// Refused callback URL: retrying with the other key spelling would not help.
const INVALID_CALLBACK: &str = "100222";

/// The management-data types: `subscribe`'s default.
pub const UPGRADE_TYPES: [&str; 4] = [
    "swUpgradeStateChangeNotify",
    "swUpgradeResultNotify",
    "fwUpgradeStateChangeNotify",
    "fwUpgradeResultNotify",
];

/// What the platform answered to one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscribed {
    /// Registered; the service-data API returns the subscription's id.
    Created {
        status: u16,
        subscription_id: Option<String>,
    },
    /// The type was already subscribed (error code given).
    Already { code: String },
}

impl Platform {
    /// Subscribes `callback_url` to `notify_type`.
    pub async fn subscribe(
        &self,
        notify_type: &str,
        callback_url: &str,
    ) -> Result<Subscribed, PlatformError> {
        let answered = if UPGRADE_TYPES.contains(&notify_type) {
            self.subscribe_management(notify_type, callback_url).await
        } else {
            let call = Call {
                method: Method::POST,
                path: SERVICE.to_owned(),
                query: vec![("ownerFlag", "false".to_owned())],
                body: Body::Json(json!({"notifyType": notify_type, "callbackUrl": callback_url})),
            };
            self.client.call(&call).await
        };
        match answered {
            Ok(answer) => Ok(Subscribed::Created {
                status: answer.status.as_u16(),
                subscription_id: serde_json::from_slice::<serde_json::Value>(&answer.body)
                    .ok()
                    .and_then(|body| body["subscriptionId"].as_str().map(str::to_owned)),
            }),
            Err(error) => match error.code() {
                Some(code) if ALREADY_SUBSCRIBED.contains(&code) => Ok(Subscribed::Already {
                    code: code.to_owned(),
                }),
                _ => Err(error),
            },
        }
    }

    /// The Doc spells the key `callbackUrl`, the SDKs `callbackurl`: the second is tried when
    /// the first is refused as a bad request.
    async fn subscribe_management(
        &self,
        notify_type: &str,
        callback_url: &str,
    ) -> Result<super::client::Answer, PlatformError> {
        let body = |key: &str| json!({"notifyType": notify_type, key: callback_url});
        let first = self
            .client
            .call(&Call::post(MANAGEMENT.to_owned(), body("callbackUrl")))
            .await;
        match first {
            Err(PlatformError::Refused {
                status: 400, code, ..
            }) if code != INVALID_CALLBACK => {
                let retry = Call::post(MANAGEMENT.to_owned(), body("callbackurl"));
                self.client.call(&retry).await
            }
            other => other,
        }
    }
}
