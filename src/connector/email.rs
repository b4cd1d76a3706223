//! The email connector: sends an item's message over SMTP with lettre.
//!
//! The SMTP server comes as a URL:
//!
//! | URL | transport |
//! |---|---|
//! | `smtp://host[:25]` | plain, no STARTTLS (local relays, tests) |
//! | `smtp://host[:587]?tls=starttls` | STARTTLS, required |
//! | `smtp://host[:25]?tls=opportunistic` | STARTTLS when the server offers it |
//! | `smtps://host[:465]` | implicit TLS |
//!
//! `user:password@` in the URL (percent-encoded) enables SMTP AUTH. TLS is rustls on
//! the `ring` provider with the system's root certificates.
//!
//! Outcome classes: an SMTP 5xx reply is permanent; a 4xx reply, a refused or broken
//! connection, a TLS failure or a timeout is transient. The acked provider message id
//! is the Message-ID, derived from the item id (`<itm_42@sendlater.example.com>`).

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::{mime, ConnectorError, Result, SendError, Sender};
use crate::pb;

/// Settings of the email connector. Its `Debug` never shows the SMTP URL's userinfo.
#[derive(Clone)]
pub struct EmailConfig {
    /// SMTP server URL; see the module doc for the forms.
    pub smtp_url: String,
    /// Sender for items whose `from` is empty (`--from`); an RFC 5322 mailbox.
    pub default_from: Option<String>,
    /// Timeout of each SMTP command (connect, each reply).
    pub timeout: Duration,
    /// Name sent in EHLO; `None` is lettre's default.
    pub hello_name: Option<String>,
}

impl EmailConfig {
    /// `smtp_url` with no default sender, a 30 s command timeout, the default EHLO name.
    pub fn new(smtp_url: impl Into<String>) -> EmailConfig {
        EmailConfig {
            smtp_url: smtp_url.into(),
            default_from: None,
            timeout: Duration::from_secs(30),
            hello_name: None,
        }
    }
}

impl std::fmt::Debug for EmailConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailConfig")
            .field("smtp_url", &redact_smtp_url(&self.smtp_url))
            .field("default_from", &self.default_from)
            .field("timeout", &self.timeout)
            .field("hello_name", &self.hello_name)
            .finish()
    }
}

/// The SMTP URL with any password replaced by `***` (the whole URL when it does not
/// parse, since then the password cannot be told apart).
pub fn redact_smtp_url(s: &str) -> String {
    match url::Url::parse(s) {
        Ok(mut u) => {
            if u.password().is_some() && u.set_password(Some("***")).is_err() {
                return "<smtp url>".to_owned();
            }
            u.to_string()
        }
        Err(_) => "<smtp url>".to_owned(),
    }
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Security {
    Plain,
    Opportunistic,
    StartTls,
    Implicit,
}

/// An SMTP URL, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SmtpTarget {
    host: String,
    port: u16,
    security: Security,
    credentials: Option<(String, String)>,
}

fn parse_smtp_url(s: &str) -> Result<SmtpTarget> {
    let bad = |why: &str| ConnectorError::Config(format!("smtp url: {why}"));
    // Never the URL itself in a message: its userinfo holds the password.
    let url = url::Url::parse(s).map_err(|e| bad(&format!("not a valid URL: {e}")))?;
    let mut security = match url.scheme() {
        "smtp" => Security::Plain,
        "smtps" => Security::Implicit,
        other => return Err(bad(&format!("scheme {other:?}: use smtp:// or smtps://"))),
    };
    for (k, v) in url.query_pairs() {
        match (k.as_ref(), v.as_ref(), security) {
            ("tls", "none" | "plain", Security::Plain) => {}
            ("tls", "starttls" | "required", Security::Plain) => security = Security::StartTls,
            ("tls", "opportunistic", Security::Plain) => security = Security::Opportunistic,
            ("tls", "implicit", Security::Implicit) => {}
            ("tls", v, _) => {
                return Err(bad(&format!(
                    "tls={v:?} does not fit {}:// (starttls, opportunistic or none with smtp://)",
                    url.scheme()
                )))
            }
            (k, _, _) => return Err(bad(&format!("unknown parameter {k:?}"))),
        }
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if !matches!(url.path(), "" | "/") {
        return Err(bad("a path is not allowed"));
    }
    let port = url.port().unwrap_or(match security {
        Security::Implicit => 465,
        Security::StartTls => 587,
        Security::Plain | Security::Opportunistic => 25,
    });
    let decode = |s: &str| {
        percent_decode(s).ok_or_else(|| bad("user or password is not valid percent-encoded UTF-8"))
    };
    let credentials = if url.username().is_empty() {
        None
    } else {
        Some((
            decode(url.username())?,
            decode(url.password().unwrap_or(""))?,
        ))
    };
    Ok(SmtpTarget {
        host,
        port,
        security,
        credentials,
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Sends email items over SMTP; holds a small connection pool.
pub struct EmailSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    default_from: Option<Mailbox>,
}

impl EmailSender {
    /// Checks the configuration and prepares the transport (connects lazily).
    ///
    /// # Errors
    /// [`ConnectorError::Config`] naming a bad URL or `default_from`.
    pub fn new(config: EmailConfig) -> Result<EmailSender> {
        let target = parse_smtp_url(&config.smtp_url)?;
        let default_from = config
            .default_from
            .as_deref()
            .map(|f| {
                f.parse::<Mailbox>()
                    .map_err(|e| ConnectorError::Config(format!("from: {f:?}: {e}")))
            })
            .transpose()?;
        let tls_params = || {
            TlsParameters::builder(target.host.clone())
                .build_rustls()
                .map_err(|e| ConnectorError::Config(format!("smtp url: TLS setup: {e}")))
        };
        let tls = match target.security {
            Security::Plain => Tls::None,
            Security::Opportunistic => Tls::Opportunistic(tls_params()?),
            Security::StartTls => Tls::Required(tls_params()?),
            Security::Implicit => Tls::Wrapper(tls_params()?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&target.host)
            .port(target.port)
            .tls(tls)
            .timeout(Some(config.timeout));
        if let Some((user, pass)) = target.credentials {
            builder = builder.credentials(Credentials::new(user, pass));
        }
        if let Some(name) = config.hello_name {
            builder = builder.hello_name(ClientId::Domain(name));
        }
        Ok(EmailSender {
            transport: builder.build(),
            default_from,
        })
    }
}

impl Sender for EmailSender {
    fn channel(&self) -> pb::Channel {
        pb::Channel::Email
    }

    async fn send(&self, job: &pb::DeliveryJob) -> Result<String, SendError> {
        let item = job
            .item
            .as_ref()
            .ok_or_else(|| SendError::permanent("delivery job without an item"))?;
        let Some(pb::scheduled_item::Content::Email(email)) = &item.content else {
            return Err(SendError::permanent(
                "email connector got an item without email content",
            ));
        };
        let (message, message_id) = mime::build(item, email, self.default_from.as_ref())?;
        match self.transport.send(message).await {
            Ok(_) => Ok(message_id),
            Err(e) => Err(classify(&e)),
        }
    }
}

/// 5xx replies are permanent; everything else (4xx, network, TLS, timeouts) transient.
fn classify(e: &lettre::transport::smtp::Error) -> SendError {
    let message = format!("smtp: {e}");
    if e.is_permanent() {
        SendError::permanent(message)
    } else {
        SendError::transient(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(s: &str) -> SmtpTarget {
        parse_smtp_url(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn smtp_urls_choose_port_and_security() {
        let t = target("smtp://mail.example.com");
        assert_eq!((t.port, t.security), (25, Security::Plain));
        assert_eq!(t.credentials, None);
        let t = target("smtp://mail.example.com?tls=starttls");
        assert_eq!((t.port, t.security), (587, Security::StartTls));
        let t = target("smtp://mail.example.com:2525?tls=opportunistic");
        assert_eq!((t.port, t.security), (2525, Security::Opportunistic));
        let t = target("smtps://mail.example.com");
        assert_eq!((t.port, t.security), (465, Security::Implicit));
        let t = target("smtp://127.0.0.1:1025");
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 1025));
        let t = target("smtp://[::1]:1025");
        assert_eq!(t.host, "::1");
    }

    #[test]
    fn credentials_come_from_the_url_userinfo_decoded() {
        let t = target("smtp://bot%40acme:p%3Ass@mail.example.com:587?tls=starttls");
        assert_eq!(
            t.credentials,
            Some(("bot@acme".to_owned(), "p:ss".to_owned()))
        );
    }

    #[test]
    fn bad_smtp_urls_are_config_errors() {
        for s in [
            "http://mail.example.com",
            "smtp://",
            "smtps://mail.example.com?tls=starttls",
            "smtp://mail.example.com?tls=bogus",
            "smtp://mail.example.com?port=1",
            "smtp://mail.example.com/path",
            "mail.example.com:25",
        ] {
            assert!(
                matches!(parse_smtp_url(s), Err(ConnectorError::Config(m)) if m.starts_with("smtp url")),
                "{s} should be rejected"
            );
        }
    }

    #[test]
    fn no_smtp_url_error_or_debug_output_shows_the_password() {
        for s in [
            "smtp://bot:hunter2-secret@mail example.com",
            "smtpx://bot:hunter2-secret@mail.example.com",
            "smtp://bot:hunter2-secret@mail.example.com/path",
            "smtp://bot:hunter2-secret@mail.example.com?tls=bogus",
            "smtp://bot:hunter2-secret%zz@mail.example.com",
        ] {
            let m = parse_smtp_url(s).expect_err(s).to_string();
            assert!(m.starts_with("smtp url"), "{m}");
            assert!(!m.contains("hunter2"), "{s}: {m}");
        }
        let c = EmailConfig::new("smtp://bot:hunter2-secret@mail.example.com:587");
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2"), "{d}");
        assert!(d.contains("mail.example.com"), "{d}");
    }

    #[test]
    fn a_bad_default_sender_is_a_config_error() {
        let mut c = EmailConfig::new("smtp://127.0.0.1:25");
        c.default_from = Some("not a mailbox".into());
        assert!(
            matches!(EmailSender::new(c), Err(ConnectorError::Config(m)) if m.starts_with("from"))
        );
    }
}
