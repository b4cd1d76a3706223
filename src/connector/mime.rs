//! Building the MIME message of an email item (pure: no I/O, no clock but `Date`).
//!
//! Shape: `multipart/alternative` (text then HTML) when both bodies are given, a single
//! part otherwise. Headers: From (the item's or the connector's default), To, Cc,
//! Subject, Date, Message-ID, In-Reply-To and References (when the item answers a
//! message), `X-Sendlater-Item`. Bcc addresses go to the SMTP envelope only, never into
//! a header. Attachments are references, so they are rendered as links at the end of
//! each body: `filename (size): url` lines in text, `<a>` links in HTML.
//!
//! The Message-ID is derived from the item id (`<itm_42@sendlater.example.com>`), so a
//! redelivered job produces a message the receiving side recognises as the same one.

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::Message;

use super::SendError;
use crate::pb;

/// The header naming the item a message was sent for.
pub const ITEM_HEADER: &str = "X-Sendlater-Item";

/// Builds the message for `item`, whose content is `email`; `default_from` is used when
/// the item names no sender. Returns the message and its Message-ID.
///
/// # Errors
/// A permanent [`SendError`] for content no retry can fix: no sender, a malformed
/// address, no recipient.
pub fn build(
    item: &pb::ScheduledItem,
    email: &pb::EmailContent,
    default_from: Option<&Mailbox>,
) -> Result<(Message, String), SendError> {
    let from = if email.from.trim().is_empty() {
        default_from.cloned().ok_or_else(|| {
            SendError::permanent("email.from: empty, and the connector has no default sender")
        })?
    } else {
        parse_mailbox("email.from", &email.from)?
    };
    let message_id = message_id(&item.item_id, from.email.domain());
    let mut b = Message::builder()
        .from(from)
        .subject(email.subject.clone())
        .message_id(Some(message_id.clone()))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str(ITEM_HEADER),
            item.item_id.clone(),
        ));
    for (i, a) in email.to.iter().enumerate() {
        b = b.to(parse_mailbox(&format!("email.to[{i}]"), a)?);
    }
    for (i, a) in email.cc.iter().enumerate() {
        b = b.cc(parse_mailbox(&format!("email.cc[{i}]"), a)?);
    }
    // The builder puts Bcc into the envelope and then drops the header.
    for (i, a) in email.bcc.iter().enumerate() {
        b = b.bcc(parse_mailbox(&format!("email.bcc[{i}]"), a)?);
    }
    if !email.in_reply_to.trim().is_empty() {
        let parent = angle(email.in_reply_to.trim());
        b = b.in_reply_to(parent.clone()).references(parent);
    }

    let text = (!email.text_body.is_empty())
        .then(|| format!("{}{}", email.text_body, text_links(&email.attachments)));
    let html = (!email.html_body.is_empty())
        .then(|| format!("{}{}", email.html_body, html_links(&email.attachments)));
    let message = match (text, html) {
        (Some(text), Some(html)) => b.multipart(MultiPart::alternative_plain_html(text, html)),
        (Some(text), None) => b.singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(text),
        ),
        (None, Some(html)) => b.singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_HTML)
                .body(html),
        ),
        (None, None) => return Err(SendError::permanent("email: no text_body nor html_body")),
    }
    .map_err(|e| SendError::permanent(format!("email: cannot build the message: {e}")))?;
    Ok((message, message_id))
}

fn parse_mailbox(field: &str, s: &str) -> Result<Mailbox, SendError> {
    s.trim()
        .parse()
        .map_err(|e| SendError::permanent(format!("{field}: {s:?} is not an address: {e}")))
}

/// `<id>` with the angle brackets added if missing.
fn angle(id: &str) -> String {
    if id.starts_with('<') && id.ends_with('>') {
        id.to_owned()
    } else {
        format!("<{id}>")
    }
}

/// `<item_id@sendlater.domain>`: the same for every attempt of the item.
///
/// The id is opaque, so characters outside RFC 5322 `atext` (and `=`, the escape) are
/// written `=XX` in hex: two different ids never give the same Message-ID.
pub fn message_id(item_id: &str, from_domain: &str) -> String {
    let mut local = String::with_capacity(item_id.len());
    for b in item_id.bytes() {
        if b.is_ascii_alphanumeric() || (b"!#$%&'*+-/?^_`{|}~".contains(&b)) {
            local.push(char::from(b));
        } else {
            local.push_str(&format!("={b:02X}"));
        }
    }
    let domain: String = from_domain
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
        .collect();
    let domain = domain.trim_matches('.');
    let domain = if domain.is_empty() { "local" } else { domain };
    format!("<{local}@sendlater.{domain}>")
}

/// `1234` -> `1.2 KB`; plain bytes below 1 KB, one decimal above.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1000.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1000.0 {
            break;
        }
        v /= 1000.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

fn text_links(attachments: &[pb::Attachment]) -> String {
    if attachments.is_empty() {
        return String::new();
    }
    let mut s = String::from("\n\nAttachments:\n");
    for a in attachments {
        s.push_str(&format!(
            "{} ({}): {}\n",
            a.filename,
            human_size(a.size_bytes),
            a.url
        ));
    }
    s
}

fn html_links(attachments: &[pb::Attachment]) -> String {
    if attachments.is_empty() {
        return String::new();
    }
    let mut s = String::from("\n<p>Attachments:</p>\n<ul>\n");
    for a in attachments {
        s.push_str(&format!(
            "<li><a href=\"{}\">{}</a> ({})</li>\n",
            escape_html(&a.url),
            escape_html(&a.filename),
            human_size(a.size_bytes)
        ));
    }
    s.push_str("</ul>\n");
    s
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(email: pb::EmailContent) -> pb::ScheduledItem {
        pb::ScheduledItem {
            item_id: "itm_42".into(),
            content: Some(pb::scheduled_item::Content::Email(email.clone())),
            ..Default::default()
        }
    }

    fn content() -> pb::EmailContent {
        pb::EmailContent {
            from: "Support <support@acme.example>".into(),
            to: vec!["client@example.com".into()],
            cc: vec!["boss@example.com".into()],
            bcc: vec!["audit@acme.example".into()],
            subject: "Re: your question".into(),
            text_body: "Hello, here is the answer.".into(),
            ..Default::default()
        }
    }

    fn render(email: pb::EmailContent) -> (String, Message) {
        let (m, _) = build(&item(email.clone()), &email, None).expect("builds");
        (String::from_utf8(m.formatted()).expect("utf-8"), m)
    }

    #[test]
    fn a_text_only_message_has_one_part_and_the_headers() {
        let (raw, _) = render(content());
        assert!(
            raw.contains("From: Support <support@acme.example>\r\n"),
            "{raw}"
        );
        assert!(raw.contains("To: client@example.com\r\n"), "{raw}");
        assert!(raw.contains("Cc: boss@example.com\r\n"), "{raw}");
        assert!(raw.contains("Subject: Re: your question\r\n"), "{raw}");
        assert!(
            raw.contains("Message-ID: <itm_42@sendlater.acme.example>\r\n"),
            "{raw}"
        );
        assert!(raw.contains("X-Sendlater-Item: itm_42\r\n"), "{raw}");
        assert!(raw.contains("Content-Type: text/plain"), "{raw}");
        assert!(!raw.contains("multipart"), "{raw}");
        assert!(raw.contains("Hello, here is the answer."), "{raw}");
        assert!(!raw.contains("In-Reply-To"), "{raw}");
    }

    #[test]
    fn bcc_is_in_the_envelope_but_never_a_header() {
        let (raw, m) = render(content());
        assert!(!raw.to_ascii_lowercase().contains("bcc"), "{raw}");
        assert!(!raw.contains("audit@acme.example"), "{raw}");
        let rcpt: Vec<String> = m.envelope().to().iter().map(|a| a.to_string()).collect();
        assert_eq!(
            rcpt,
            [
                "client@example.com",
                "boss@example.com",
                "audit@acme.example"
            ]
        );
        assert_eq!(
            m.envelope().from().map(|a| a.to_string()).as_deref(),
            Some("support@acme.example")
        );
    }

    #[test]
    fn text_and_html_make_a_multipart_alternative() {
        let mut c = content();
        c.html_body = "<p>Hello, here is the <b>answer</b>.</p>".into();
        let (raw, _) = render(c);
        assert!(
            raw.contains("Content-Type: multipart/alternative;"),
            "{raw}"
        );
        let text_at = raw.find("Content-Type: text/plain").expect("text part");
        let html_at = raw.find("Content-Type: text/html").expect("html part");
        assert!(text_at < html_at, "text first, then html: {raw}");
    }

    #[test]
    fn html_only_is_a_single_html_part() {
        let mut c = content();
        c.text_body.clear();
        c.html_body = "<p>Hi</p>".into();
        let (raw, _) = render(c);
        assert!(raw.contains("Content-Type: text/html"), "{raw}");
        assert!(!raw.contains("multipart"), "{raw}");
        assert!(!raw.contains("text/plain"), "{raw}");
    }

    #[test]
    fn a_reply_carries_in_reply_to_and_references() {
        let mut c = content();
        c.in_reply_to = "abc@mail.example.com".into();
        let (raw, _) = render(c);
        assert!(
            raw.contains("In-Reply-To: <abc@mail.example.com>\r\n"),
            "{raw}"
        );
        assert!(
            raw.contains("References: <abc@mail.example.com>\r\n"),
            "{raw}"
        );
    }

    #[test]
    fn attachments_become_links_in_both_bodies() {
        let mut c = content();
        c.html_body = "<p>See attached.</p>".into();
        c.attachments = vec![pb::Attachment {
            filename: "report <Q3>.pdf".into(),
            content_type: "application/pdf".into(),
            url: "https://files.example.com/r?a=1&b=2".into(),
            size_bytes: 1_234_567,
        }];
        assert_eq!(
            text_links(&c.attachments),
            "\n\nAttachments:\nreport <Q3>.pdf (1.2 MB): https://files.example.com/r?a=1&b=2\n"
        );
        assert_eq!(
            html_links(&c.attachments),
            "\n<p>Attachments:</p>\n<ul>\n<li><a href=\"https://files.example.com/r?a=1&amp;b=2\">\
             report &lt;Q3&gt;.pdf</a> (1.2 MB)</li>\n</ul>\n"
        );
        let (raw, _) = render(c);
        assert!(raw.contains("Attachments:"), "{raw}");
    }

    #[test]
    fn the_default_sender_is_used_when_the_item_names_none() {
        let mut c = content();
        c.from.clear();
        let default: Mailbox = "noreply@help.example".parse().unwrap();
        let (m, id) = build(&item(c.clone()), &c, Some(&default)).unwrap();
        assert_eq!(id, "<itm_42@sendlater.help.example>");
        let raw = String::from_utf8(m.formatted()).unwrap();
        assert!(raw.contains("From: noreply@help.example\r\n"), "{raw}");
        let err = build(&item(c.clone()), &c, None).unwrap_err();
        assert!(
            err.permanent && err.message.starts_with("email.from"),
            "{err:?}"
        );
    }

    #[test]
    fn a_malformed_address_is_a_permanent_error_naming_the_field() {
        let mut c = content();
        c.to.push("not an address".into());
        let err = build(&item(c.clone()), &c, None).unwrap_err();
        assert!(err.permanent, "{err:?}");
        assert!(err.message.starts_with("email.to[1]"), "{err:?}");
    }

    #[test]
    fn message_ids_are_stable_and_escape_unusual_ids() {
        assert_eq!(
            message_id("itm_42", "acme.example"),
            "<itm_42@sendlater.acme.example>"
        );
        assert_eq!(message_id("itm_42", ""), "<itm_42@sendlater.local>");
        assert_eq!(message_id("a b=c", "x.y"), "<a=20b=3Dc@sendlater.x.y>");
        assert_ne!(message_id("a=20", "d"), message_id("a 20", "d"));
    }

    #[test]
    fn sizes_are_human_readable() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1000), "1.0 KB");
        assert_eq!(human_size(1_234_567), "1.2 MB");
        assert_eq!(human_size(5_000_000_000), "5.0 GB");
    }
}
