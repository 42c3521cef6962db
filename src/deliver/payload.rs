//! Pure payload builders: the body each chat service documents, and the signatures of
//! DingTalk, Feishu and Standard Webhooks. Nothing here does I/O, so all of it is unit-tested.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::action::Chat;
use crate::config::ChannelKind;

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// The JSON body of a chat message. A script's map is the service's native body and goes as
/// it is; text is put in the service's text message.
pub fn chat_body(kind: ChannelKind, chat: &Chat) -> Value {
    if let Some(payload) = &chat.payload {
        return payload.clone();
    }
    let text = chat.text.as_deref().unwrap_or_default();
    match kind {
        ChannelKind::Slack | ChannelKind::Webhook => json!({ "text": slack_escape(text) }),
        ChannelKind::Teams => teams_card(text),
        ChannelKind::Dingtalk | ChannelKind::Wecom => {
            json!({ "msgtype": "text", "text": { "content": text } })
        }
        ChannelKind::Feishu => json!({ "msg_type": "text", "content": { "text": text } }),
        ChannelKind::Log => json!({ "channel": chat.channel, "text": text }),
    }
}

/// Slack reads `&`, `<` and `>` as markup; everything else is safe inside JSON.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A Teams Workflows webhook message: one Adaptive Card with the text.
fn teams_card(text: &str) -> Value {
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [{ "type": "TextBlock", "text": text, "wrap": true }]
            }
        }]
    })
}

/// DingTalk's signed URL: `&timestamp=<ms>&sign=<urlencoded base64 HMAC-SHA256(secret,
/// "<ms>\n<secret>")>`.
pub fn dingtalk_url(url: &str, secret: &str, timestamp_ms: i64) -> Result<reqwest::Url, String> {
    let mut url = reqwest::Url::parse(url).map_err(|e| format!("invalid channel url: {e}"))?;
    let signed = format!("{timestamp_ms}\n{secret}");
    let sign = BASE64.encode(hmac_sha256(secret.as_bytes(), signed.as_bytes()));
    url.query_pairs_mut()
        .append_pair("timestamp", &timestamp_ms.to_string())
        .append_pair("sign", &sign);
    Ok(url)
}

/// Feishu's signed body: `timestamp` (seconds) and `sign`, the base64 HMAC-SHA256 keyed with
/// `"<timestamp>\n<secret>"` of an empty message.
pub fn feishu_sign(body: &mut Value, secret: &str, timestamp_secs: i64) {
    let key = format!("{timestamp_secs}\n{secret}");
    let sign = BASE64.encode(hmac_sha256(key.as_bytes(), b""));
    if let Value::Object(fields) = body {
        fields.insert(
            "timestamp".to_owned(),
            Value::from(timestamp_secs.to_string()),
        );
        fields.insert("sign".to_owned(), Value::from(sign));
    }
}

/// Standard Webhooks: `v1,<base64 HMAC-SHA256(secret, "id.timestamp.body")>`, where a
/// `whsec_` secret is base64 after its prefix and any other secret is its UTF-8 bytes.
pub fn webhook_signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = match secret
        .strip_prefix("whsec_")
        .map(|rest| BASE64.decode(rest))
    {
        Some(Ok(bytes)) => bytes,
        _ => secret.as_bytes().to_vec(),
    };
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    format!("v1,{}", BASE64.encode(hmac_sha256(&key, &signed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(text: &str) -> Chat {
        Chat {
            channel: "ops".into(),
            text: Some(text.into()),
            payload: None,
        }
    }

    #[test]
    fn text_survives_any_content_in_every_kind() {
        let nasty = "quote \" backslash \\ newline \n tab \t ünïcødé 设备 <b>&";
        for (kind, pointer) in [
            (ChannelKind::Dingtalk, "/text/content"),
            (ChannelKind::Wecom, "/text/content"),
            (ChannelKind::Feishu, "/content/text"),
            (ChannelKind::Teams, "/attachments/0/content/body/0/text"),
        ] {
            let body = chat_body(kind, &chat(nasty));
            let sent: Value = serde_json::from_slice(&serde_json::to_vec(&body).unwrap()).unwrap();
            assert_eq!(sent.pointer(pointer), Some(&Value::from(nasty)), "{kind}");
        }
        let slack = chat_body(ChannelKind::Slack, &chat(nasty));
        let escaped = "quote \" backslash \\ newline \n tab \t ünïcødé 设备 &lt;b&gt;&amp;";
        assert_eq!(slack["text"], escaped);
    }

    #[test]
    fn a_map_is_sent_as_the_native_body() {
        let native = json!({"blocks": [{"type": "section"}]});
        let message = Chat {
            channel: "ops".into(),
            text: None,
            payload: Some(native.clone()),
        };
        assert_eq!(chat_body(ChannelKind::Slack, &message), native);
    }

    #[test]
    fn each_kind_has_its_documented_shape() {
        assert_eq!(
            chat_body(ChannelKind::Feishu, &chat("hi")),
            json!({"msg_type": "text", "content": {"text": "hi"}})
        );
        assert_eq!(
            chat_body(ChannelKind::Wecom, &chat("hi")),
            json!({"msgtype": "text", "text": {"content": "hi"}})
        );
        let card = chat_body(ChannelKind::Teams, &chat("hi"));
        assert_eq!(
            card["attachments"][0]["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        assert_eq!(card["attachments"][0]["content"]["body"][0]["text"], "hi");
    }

    #[test]
    fn standard_webhooks_signature_matches_the_reference_vector() {
        // The test vector of the Standard Webhooks specification's reference libraries.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let signature = webhook_signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn dingtalk_signs_the_url_and_feishu_the_body() {
        let url = dingtalk_url(
            "https://oapi.dingtalk.com/robot/send?access_token=t",
            "SEC1",
            1_700_000_000_000,
        )
        .unwrap();
        let query: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        assert_eq!(query[0], ("access_token".into(), "t".into()));
        assert_eq!(query[1], ("timestamp".into(), "1700000000000".into()));
        let expected = BASE64.encode(hmac_sha256(b"SEC1", b"1700000000000\nSEC1"));
        assert_eq!(query[2], ("sign".into(), expected));
        let mut body = json!({"msg_type": "text"});
        feishu_sign(&mut body, "s", 1_700_000_000);
        assert_eq!(body["timestamp"], "1700000000");
        assert_eq!(
            body["sign"],
            BASE64.encode(hmac_sha256(b"1700000000\ns", b""))
        );
    }
}
