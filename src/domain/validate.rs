//! Validation of what callers send, with errors naming the field (`email.to[1]: ...`).

use super::{Content, EmailContent, Error, Millis, NewItem, Result};
use crate::config::Limits;

/// Longest id (account, ticket, author, request, message) accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// Longest attachment filename or content type accepted, in bytes.
pub const MAX_ATTACHMENT_NAME_BYTES: usize = 255;

/// Checks a non-empty identifier field.
///
/// # Errors
/// `InvalidArgument` naming `field` when empty, too long or containing control characters.
pub fn validate_id(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(Error::invalid(
            field,
            format!("is {} bytes, at most {MAX_ID_BYTES} allowed", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Checks a send time against now, the allowed skew into the past and the horizon.
///
/// # Errors
/// `InvalidArgument` on `send_at`.
pub fn validate_send_at(send_at: Millis, now: Millis, limits: &Limits) -> Result<()> {
    if send_at < now.saturating_sub(limits.max_past_ms) {
        return Err(Error::invalid(
            "send_at",
            format!(
                "is {} ms in the past (at most {} ms allowed)",
                now - send_at,
                limits.max_past_ms
            ),
        ));
    }
    if send_at > now.saturating_add(limits.max_horizon_ms()) {
        return Err(Error::invalid(
            "send_at",
            format!("is beyond the horizon of {} days", limits.max_horizon_days),
        ));
    }
    Ok(())
}

/// Validates a schedule request.
///
/// # Errors
/// `InvalidArgument` naming the first offending field.
pub fn validate_new(item: &NewItem, now: Millis, limits: &Limits) -> Result<()> {
    validate_id("account_id", &item.account_id)?;
    validate_id("ticket_id", &item.ticket_id)?;
    validate_id("author_id", &item.author_id)?;
    if let Some(r) = &item.request_id {
        validate_id("request_id", r)?;
    }
    if item.content.channel() != item.channel {
        return Err(Error::invalid(
            "channel",
            format!(
                "is {} but the content is {}",
                item.channel,
                item.content.channel()
            ),
        ));
    }
    validate_content(&item.content, limits)?;
    if let Some(max) = item.timing.max_lateness {
        // As the gRPC conversion says of a negative Duration (the console's form
        // reaches here with its own number).
        if max < 0 {
            return Err(Error::invalid(
                "max_lateness",
                "must be a non-negative duration",
            ));
        }
        if max > limits.max_horizon_ms() {
            return Err(Error::invalid(
                "max_lateness",
                format!(
                    "is longer than the scheduling horizon ({} days)",
                    limits.max_horizon_days
                ),
            ));
        }
    }
    validate_send_at(item.send_at, now, limits)
}

/// Validates message content: recipients, bodies, sizes.
///
/// # Errors
/// `InvalidArgument` naming the field (`email.to`, `email.text_body`, `chat.text`, ...).
pub fn validate_content(content: &Content, limits: &Limits) -> Result<()> {
    match content {
        Content::Email(e) => validate_email(e, limits),
        Content::Chat(c) => {
            if c.text.trim().is_empty() {
                return Err(Error::invalid("chat.text", "must not be empty"));
            }
            check_body("chat.text", &c.text, limits)?;
            if c.conversation_id.len() > MAX_ID_BYTES {
                return Err(Error::invalid("chat.conversation_id", "is too long"));
            }
            validate_attachments("chat.attachments", &c.attachments, limits)?;
            check_total("chat", chat_bytes(c), limits)
        }
    }
}

/// The bytes of an item's content as stored and sent: every string field.
pub fn content_bytes(content: &Content) -> usize {
    match content {
        Content::Email(e) => email_bytes(e),
        Content::Chat(c) => chat_bytes(c),
    }
}

fn email_bytes(e: &EmailContent) -> usize {
    let addresses: usize =
        e.to.iter()
            .chain(&e.cc)
            .chain(&e.bcc)
            .map(String::len)
            .sum();
    e.from.len()
        + addresses
        + e.subject.len()
        + e.text_body.len()
        + e.html_body.len()
        + e.in_reply_to.len()
        + attachments_bytes(&e.attachments)
}

fn chat_bytes(c: &super::ChatContent) -> usize {
    c.conversation_id.len() + c.text.len() + attachments_bytes(&c.attachments)
}

fn attachments_bytes(list: &[super::Attachment]) -> usize {
    list.iter()
        .map(|a| a.filename.len() + a.content_type.len() + a.url.len() + 8)
        .sum()
}

fn check_total(field: &str, total: usize, limits: &Limits) -> Result<()> {
    if total > limits.max_item_bytes {
        return Err(Error::invalid(
            field,
            format!(
                "the whole content (bodies, subject, addresses, attachments) is {total} bytes, \
                 at most {} allowed",
                limits.max_item_bytes
            ),
        ));
    }
    Ok(())
}

fn validate_email(e: &EmailContent, limits: &Limits) -> Result<()> {
    if e.to.is_empty() {
        return Err(Error::invalid("email.to", "needs at least one recipient"));
    }
    let total = e.to.len() + e.cc.len() + e.bcc.len();
    if total > limits.max_recipients {
        return Err(Error::invalid(
            "email.to",
            format!(
                "to+cc+bcc has {total} recipients, at most {} allowed",
                limits.max_recipients
            ),
        ));
    }
    for (name, list) in [("to", &e.to), ("cc", &e.cc), ("bcc", &e.bcc)] {
        for (i, addr) in list.iter().enumerate() {
            if !is_valid_address(addr) {
                return Err(Error::invalid(
                    format!("email.{name}[{i}]"),
                    format!("{addr:?} is not an email address"),
                ));
            }
        }
    }
    if !e.from.is_empty() && !is_valid_address(&e.from) {
        return Err(Error::invalid(
            "email.from",
            format!("{:?} is not an email address", e.from),
        ));
    }
    if e.text_body.trim().is_empty() && e.html_body.trim().is_empty() {
        return Err(Error::invalid(
            "email.text_body",
            "text_body or html_body must not be empty",
        ));
    }
    check_body("email.text_body", &e.text_body, limits)?;
    check_body("email.html_body", &e.html_body, limits)?;
    if e.subject.len() > 998 {
        return Err(Error::invalid("email.subject", "is longer than 998 bytes"));
    }
    if e.subject.contains(['\r', '\n']) {
        return Err(Error::invalid("email.subject", "must be one line"));
    }
    if e.in_reply_to.contains(['\r', '\n']) || e.in_reply_to.len() > 998 {
        return Err(Error::invalid(
            "email.in_reply_to",
            "must be one short line",
        ));
    }
    validate_attachments("email.attachments", &e.attachments, limits)?;
    check_total("email", email_bytes(e), limits)
}

fn check_body(field: &str, body: &str, limits: &Limits) -> Result<()> {
    if body.len() > limits.max_body_bytes {
        return Err(Error::invalid(
            field,
            format!(
                "is {} bytes, at most {} allowed",
                body.len(),
                limits.max_body_bytes
            ),
        ));
    }
    Ok(())
}

fn validate_attachments(field: &str, list: &[super::Attachment], limits: &Limits) -> Result<()> {
    if list.len() > limits.max_attachments {
        return Err(Error::invalid(
            field,
            format!(
                "has {} attachments, at most {} allowed",
                list.len(),
                limits.max_attachments
            ),
        ));
    }
    for (i, a) in list.iter().enumerate() {
        if a.url.is_empty() {
            return Err(Error::invalid(format!("{field}[{i}].url"), "is required"));
        }
        if a.url.len() > limits.max_url_bytes {
            return Err(Error::invalid(
                format!("{field}[{i}].url"),
                format!(
                    "is {} bytes, at most {} allowed",
                    a.url.len(),
                    limits.max_url_bytes
                ),
            ));
        }
        for (name, value) in [("filename", &a.filename), ("content_type", &a.content_type)] {
            if value.len() > MAX_ATTACHMENT_NAME_BYTES {
                return Err(Error::invalid(
                    format!("{field}[{i}].{name}"),
                    format!(
                        "is {} bytes, at most {MAX_ATTACHMENT_NAME_BYTES} allowed",
                        value.len()
                    ),
                ));
            }
        }
        if a.filename.contains(['\r', '\n', '"']) {
            return Err(Error::invalid(
                format!("{field}[{i}].filename"),
                "must not contain quotes or line breaks",
            ));
        }
    }
    Ok(())
}

/// A pragmatic address check: `local@domain` (optionally as `Name <local@domain>`),
/// no whitespace or control characters in the address, a dot-free domain allowed only
/// for `localhost`-style hosts. Deliverability is the mail server's business.
pub fn is_valid_address(s: &str) -> bool {
    let addr = match (s.rfind('<'), s.ends_with('>')) {
        (Some(i), true) => &s[i + 1..s.len() - 1],
        (None, false) => s,
        _ => return false,
    };
    if addr.len() > 254 || addr.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && !domain.is_empty()
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && !domain.contains(['<', '>', '@', ',', ';', '"'])
        && !local.contains(['<', '>', ',', ';', '@'])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Channel, ChatContent, Kind, OnActivity};

    const NOW: Millis = 1_800_000_000_000;

    #[test]
    fn a_max_lateness_beyond_the_horizon_is_invalid_naming_the_field() {
        let limits = Limits::default();
        let mut n = email(&["a@example.com"], "hi");
        n.timing.max_lateness = Some(limits.max_horizon_ms());
        assert!(validate_new(&n, NOW, &limits).is_ok());
        n.timing.max_lateness = Some(limits.max_horizon_ms() + 1);
        let e = validate_new(&n, NOW, &limits).unwrap_err();
        assert!(e.to_string().starts_with("max_lateness: "), "{e}");
    }

    #[test]
    fn a_negative_max_lateness_is_invalid_naming_the_field() {
        let limits = Limits::default();
        let mut n = email(&["a@example.com"], "hi");
        n.timing.max_lateness = Some(-60_000);
        let e = validate_new(&n, NOW, &limits).unwrap_err();
        assert!(e.to_string().starts_with("max_lateness: "), "{e}");
    }

    fn email(to: &[&str], text: &str) -> NewItem {
        NewItem {
            account_id: "acme".into(),
            ticket_id: "T1".into(),
            kind: Kind::Reply,
            channel: Channel::Email,
            author_id: "agent".into(),
            content: Content::Email(EmailContent {
                to: to.iter().map(|s| s.to_string()).collect(),
                text_body: text.into(),
                ..Default::default()
            }),
            send_at: NOW + 60_000,
            on_activity: OnActivity::ConvertToNote,
            request_id: None,
            timing: Default::default(),
        }
    }

    fn field_of(r: Result<()>) -> String {
        match r {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn a_well_formed_email_passes() {
        validate_new(&email(&["a@example.com"], "hi"), NOW, &Limits::default()).unwrap();
    }

    #[test]
    fn each_bad_field_is_named() {
        let l = Limits::default();
        let mut cases: Vec<(NewItem, &str)> = vec![
            (email(&[], "hi"), "email.to"),
            (email(&["a@example.com", "bad"], "hi"), "email.to[1]"),
            (email(&["a@example.com"], "  "), "email.text_body"),
        ];
        let mut no_account = email(&["a@example.com"], "hi");
        no_account.account_id.clear();
        cases.push((no_account, "account_id"));
        let mut no_ticket = email(&["a@example.com"], "hi");
        no_ticket.ticket_id.clear();
        cases.push((no_ticket, "ticket_id"));
        let mut past = email(&["a@example.com"], "hi");
        past.send_at = NOW - 1001;
        cases.push((past, "send_at"));
        let mut far = email(&["a@example.com"], "hi");
        far.send_at = NOW + l.max_horizon_ms() + 1;
        cases.push((far, "send_at"));
        let mut big = email(&["a@example.com"], "hi");
        if let Content::Email(e) = &mut big.content {
            e.html_body = "x".repeat(l.max_body_bytes + 1);
        }
        cases.push((big, "email.html_body"));
        let mut many = email(&["a@example.com"], "hi");
        if let Content::Email(e) = &mut many.content {
            e.bcc = vec!["b@example.com".into(); l.max_recipients];
        }
        cases.push((many, "email.to"));
        let mut mismatch = email(&["a@example.com"], "hi");
        mismatch.channel = Channel::Chat;
        cases.push((mismatch, "channel"));
        let mut chat = email(&["a@example.com"], "hi");
        chat.channel = Channel::Chat;
        chat.content = Content::Chat(ChatContent::default());
        cases.push((chat, "chat.text"));
        for (item, want) in cases {
            assert_eq!(field_of(validate_new(&item, NOW, &l)), want);
        }
    }

    #[test]
    fn send_at_up_to_one_second_in_the_past_is_accepted() {
        let mut it = email(&["a@example.com"], "hi");
        it.send_at = NOW - 1000;
        validate_new(&it, NOW, &Limits::default()).unwrap();
    }

    #[test]
    fn address_forms() {
        for ok in [
            "a@b.c",
            "Ann <ann@example.com>",
            "x+tag@sub.example.org",
            "u@localhost",
        ] {
            assert!(is_valid_address(ok), "{ok}");
        }
        for bad in [
            "", "a", "@b.c", "a@", "a b@c.d", "a@b..c", "a@.b", "<a@b.c", "a@b.c>", "a@b@c",
        ] {
            assert!(!is_valid_address(bad), "{bad}");
        }
    }

    #[test]
    fn batch_prefix_is_prepended_to_the_field() {
        let e = validate_new(&email(&[], "hi"), NOW, &Limits::default())
            .unwrap_err()
            .in_field("entries[3].");
        assert!(e.to_string().starts_with("entries[3].email.to: "), "{e}");
    }
}
