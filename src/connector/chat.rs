//! The chat connector: POSTs each item as signed JSON to a webhook.
//!
//! # Request
//! `POST <webhook_url>` with
//! - `Content-Type: application/json`
//! - `Idempotency-Key: <item id>`: the same on every attempt of an item, so the
//!   receiver can drop a redelivery (delivery is at least once);
//! - `X-Sendlater-Signature: t=<unix secs>,v1=<hex>,v2=<hex>` when a secret is
//!   configured (v2 also covers the Idempotency-Key); the scheme and how to verify it
//!   are in [`super::signature`];
//! - the body
//!   ```json
//!   {"item_id": "itm_42", "account_id": "acme", "ticket_id": "T1", "kind": "REPLY",
//!    "conversation_id": "conv-1", "text": "Hi!",
//!    "attachments": [{"filename": "a.pdf", "content_type": "application/pdf",
//!                     "url": "https://...", "size_bytes": 1234}],
//!    "attempt": 1, "send_at": "2026-11-25T10:01:00.000Z"}
//!   ```
//!
//! # Response
//! Any 2xx is a success; the provider message id is the `id` field of a JSON response
//! body when there is one (string or number), else the Idempotency-Key. 5xx, 408, 429,
//! timeouts and connection errors are transient (retried with backoff); any other
//! status is permanent. Redirects are not followed (a 3xx is permanent).
//!
//! HTTP is hyper's client over rustls (`ring` provider, system roots), HTTP/1.1.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{header, Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use super::signature::{self, SIGNATURE_HEADER};
use super::{ConnectorError, Result, SendError, Sender};
use crate::pb;

/// Name of the idempotency header (the item id).
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Response bodies larger than this are not read for an `id`.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Settings of the chat connector. Its `Debug` shows neither the secret nor the URL's
/// path (which is often a secret of its own).
#[derive(Clone)]
pub struct ChatConfig {
    /// `http://` or `https://` URL the items are POSTed to.
    pub webhook_url: String,
    /// Shared secret for `X-Sendlater-Signature`; `None` sends unsigned requests.
    pub secret: Option<String>,
    /// Whole-request timeout (connect, send, response and body).
    pub timeout: Duration,
}

impl ChatConfig {
    /// `webhook_url`, unsigned, with a 10 s timeout.
    pub fn new(webhook_url: impl Into<String>) -> ChatConfig {
        ChatConfig {
            webhook_url: webhook_url.into(),
            secret: None,
            timeout: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for ChatConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatConfig")
            .field("webhook_url", &redact_webhook_url(&self.webhook_url))
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The webhook URL as `scheme://authority/...`: its path and query left out.
pub fn redact_webhook_url(s: &str) -> String {
    match s.parse::<Uri>() {
        Ok(u) => match (u.scheme_str(), u.authority()) {
            (Some(scheme), Some(a)) => format!(
                "{scheme}://{}/...",
                a.as_str().rsplit('@').next().unwrap_or("")
            ),
            _ => "<webhook url>".to_owned(),
        },
        Err(_) => "<webhook url>".to_owned(),
    }
}

/// Posts chat items to the webhook; keeps connections alive between requests.
pub struct ChatSender {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: Uri,
    secret: Option<Vec<u8>>,
    timeout: Duration,
}

impl ChatSender {
    /// Checks the configuration and builds the HTTP client.
    ///
    /// # Errors
    /// [`ConnectorError::Config`] for a URL that is not absolute http(s), or when an
    /// https URL is given and no root certificate can be loaded.
    pub fn new(config: ChatConfig) -> Result<ChatSender> {
        // Never the URL itself in a message: its path is often the secret (Slack-style
        // webhook URLs), so at most the scheme and host are named.
        let uri: Uri = config
            .webhook_url
            .parse()
            .map_err(|e| ConnectorError::Config(format!("webhook: not a valid URL: {e}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(ConnectorError::Config(format!(
                    "webhook: the URL must be http:// or https://, not {}",
                    uri.scheme_str()
                        .map_or_else(|| "a relative one".to_owned(), |s| format!("{s}://"))
                )))
            }
        };
        if uri.host().is_none() {
            return Err(ConnectorError::Config(
                "webhook: the URL has no host".to_owned(),
            ));
        }
        let provider = || rustls::crypto::ring::default_provider();
        let builder = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider())
        {
            Ok(b) => b,
            Err(e) if https => {
                return Err(ConnectorError::Config(format!(
                    "webhook: no usable root certificates for https: {e}"
                )))
            }
            // Plain http needs no roots; an empty store keeps the one connector type.
            Err(_) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder_with_provider(provider().into())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| ConnectorError::Config(format!("webhook: TLS setup: {e}")))?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            ),
        };
        let connector = builder.https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(ChatSender {
            client,
            uri,
            secret: config.secret.map(String::into_bytes),
            timeout: config.timeout,
        })
    }

    async fn post(&self, item_id: &str, body: Vec<u8>) -> Result<String, SendError> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "sendlater-connector")
            .header(IDEMPOTENCY_HEADER, item_id);
        if let Some(secret) = &self.secret {
            req = req.header(
                SIGNATURE_HEADER,
                signature::sign_with_key(secret, unix_now(), item_id, &body),
            );
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SendError::permanent(format!("webhook: cannot build the request: {e}")))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| SendError::transient(format!("webhook: {}", error_chain(&e))))?;
            let status = resp.status();
            // A body we cannot read (too big, cut off) leaves only the status to go on.
            let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, SendError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                SendError::transient(format!("webhook: no answer within {:?}", self.timeout))
            })??;
        outcome(status, &body, item_id)
    }
}

impl Sender for ChatSender {
    fn channel(&self) -> pb::Channel {
        pb::Channel::Chat
    }

    async fn send(&self, job: &pb::DeliveryJob) -> Result<String, SendError> {
        let item = job
            .item
            .as_ref()
            .ok_or_else(|| SendError::permanent("delivery job without an item"))?;
        let Some(pb::scheduled_item::Content::Chat(chat)) = &item.content else {
            return Err(SendError::permanent(
                "chat connector got an item without chat content",
            ));
        };
        let body = payload(item, chat, job.attempt);
        self.post(&item.item_id, body).await
    }
}

/// The JSON body of a webhook request.
#[derive(Serialize)]
struct Payload<'a> {
    item_id: &'a str,
    account_id: &'a str,
    ticket_id: &'a str,
    kind: &'static str,
    conversation_id: &'a str,
    text: &'a str,
    attachments: Vec<AttachmentRef<'a>>,
    attempt: u32,
    send_at: Option<String>,
}

#[derive(Serialize)]
struct AttachmentRef<'a> {
    filename: &'a str,
    content_type: &'a str,
    url: &'a str,
    size_bytes: u64,
}

fn payload(item: &pb::ScheduledItem, chat: &pb::ChatContent, attempt: u32) -> Vec<u8> {
    let kind = match pb::Kind::try_from(item.kind) {
        Ok(pb::Kind::NewTicket) => "NEW_TICKET",
        _ => "REPLY",
    };
    let p = Payload {
        item_id: &item.item_id,
        account_id: &item.account_id,
        ticket_id: &item.ticket_id,
        kind,
        conversation_id: &chat.conversation_id,
        text: &chat.text,
        attachments: chat
            .attachments
            .iter()
            .map(|a| AttachmentRef {
                filename: &a.filename,
                content_type: &a.content_type,
                url: &a.url,
                size_bytes: a.size_bytes,
            })
            .collect(),
        attempt,
        send_at: item.send_at.as_ref().and_then(rfc3339),
    };
    serde_json::to_vec(&p).expect("a struct of strings and numbers always serialises")
}

fn rfc3339(t: &prost_types::Timestamp) -> Option<String> {
    let nanos = u32::try_from(t.nanos).ok()?;
    chrono::DateTime::from_timestamp(t.seconds, nanos)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// What a webhook status means for the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Success,
    Transient,
    Permanent,
}

fn classify(status: StatusCode) -> Class {
    if status.is_success() {
        Class::Success
    } else if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
    {
        Class::Transient
    } else {
        Class::Permanent
    }
}

/// Turns a response into the provider message id or a [`SendError`].
fn outcome(status: StatusCode, body: &[u8], idempotency_key: &str) -> Result<String, SendError> {
    let message = || {
        let snippet: String = String::from_utf8_lossy(body).chars().take(200).collect();
        let snippet = snippet.trim();
        if snippet.is_empty() {
            format!("webhook answered HTTP {status}")
        } else {
            format!("webhook answered HTTP {status}: {snippet}")
        }
    };
    match classify(status) {
        Class::Success => Ok(response_id(body).unwrap_or_else(|| idempotency_key.to_owned())),
        Class::Transient => Err(SendError::transient(message())),
        Class::Permanent => Err(SendError::permanent(message())),
    }
}

/// The `id` of a JSON object body, as a string; `None` for anything else.
fn response_id(body: &[u8]) -> Option<String> {
    match serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("id")?
    {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `e: cause: cause...`, since hyper's top-level messages say little.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        for (code, want) in [
            (200, Class::Success),
            (201, Class::Success),
            (204, Class::Success),
            (301, Class::Permanent),
            (400, Class::Permanent),
            (401, Class::Permanent),
            (404, Class::Permanent),
            (408, Class::Transient),
            (422, Class::Permanent),
            (429, Class::Transient),
            (500, Class::Transient),
            (502, Class::Transient),
            (503, Class::Transient),
        ] {
            assert_eq!(
                classify(StatusCode::from_u16(code).unwrap()),
                want,
                "HTTP {code}"
            );
        }
    }

    #[test]
    fn the_provider_id_is_the_response_id_or_the_idempotency_key() {
        let ok = StatusCode::OK;
        assert_eq!(outcome(ok, br#"{"id":"m-7"}"#, "itm_1").unwrap(), "m-7");
        assert_eq!(outcome(ok, br#"{"id":42}"#, "itm_1").unwrap(), "42");
        assert_eq!(outcome(ok, b"", "itm_1").unwrap(), "itm_1");
        assert_eq!(outcome(ok, b"ok", "itm_1").unwrap(), "itm_1");
        assert_eq!(outcome(ok, br#"{"id":""}"#, "itm_1").unwrap(), "itm_1");
    }

    #[test]
    fn errors_mention_the_status_and_the_body() {
        let e = outcome(StatusCode::BAD_REQUEST, b"no such conversation", "k").unwrap_err();
        assert!(e.permanent);
        assert_eq!(
            e.message,
            "webhook answered HTTP 400 Bad Request: no such conversation"
        );
        let e = outcome(StatusCode::SERVICE_UNAVAILABLE, b"", "k").unwrap_err();
        assert!(!e.permanent);
        assert_eq!(e.message, "webhook answered HTTP 503 Service Unavailable");
    }

    #[test]
    fn the_payload_has_the_documented_fields() {
        let chat = pb::ChatContent {
            conversation_id: "conv-1".into(),
            text: "Hi!".into(),
            attachments: vec![pb::Attachment {
                filename: "a.pdf".into(),
                content_type: "application/pdf".into(),
                url: "https://files.example.com/a.pdf".into(),
                size_bytes: 1234,
            }],
        };
        let item = pb::ScheduledItem {
            item_id: "itm_42".into(),
            account_id: "acme".into(),
            ticket_id: "T1".into(),
            kind: pb::Kind::Reply as i32,
            send_at: Some(prost_types::Timestamp {
                seconds: 1_795_608_060,
                nanos: 0,
            }),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_slice(&payload(&item, &chat, 2)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "item_id": "itm_42", "account_id": "acme", "ticket_id": "T1",
                "kind": "REPLY", "conversation_id": "conv-1", "text": "Hi!",
                "attachments": [{"filename": "a.pdf", "content_type": "application/pdf",
                                 "url": "https://files.example.com/a.pdf", "size_bytes": 1234}],
                "attempt": 2, "send_at": "2026-11-25T12:01:00.000Z"
            })
        );
    }

    #[test]
    fn no_webhook_url_error_or_debug_output_shows_the_path_or_secret() {
        for u in [
            "ftp://hooks.example.com/T0/XyZsEcReT",
            "http://hooks.example.com/T0/XyZsEcReT x",
            "/T0/XyZsEcReT",
        ] {
            let Err(ConnectorError::Config(m)) = ChatSender::new(ChatConfig::new(u)) else {
                panic!("{u:?} should be refused");
            };
            assert!(m.starts_with("webhook"), "{m}");
            assert!(!m.contains("XyZsEcReT"), "{u}: {m}");
        }
        let mut c = ChatConfig::new("https://hooks.example.com/T0/XyZsEcReT?k=v");
        c.secret = Some("whsec_hunter2".into());
        let d = format!("{c:?}");
        assert!(!d.contains("XyZsEcReT") && !d.contains("hunter2"), "{d}");
        assert!(d.contains("https://hooks.example.com/"), "{d}");
    }

    #[test]
    fn bad_webhook_urls_are_config_errors() {
        for u in ["", "ftp://x/y", "/relative", "http://"] {
            assert!(
                matches!(ChatSender::new(ChatConfig::new(u)), Err(ConnectorError::Config(m)) if m.starts_with("webhook")),
                "{u:?}"
            );
        }
        assert!(ChatSender::new(ChatConfig::new("http://127.0.0.1:9/hook")).is_ok());
    }
}
