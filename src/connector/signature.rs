//! Webhook signatures: HMAC-SHA256 over a timestamp and the body, Stripe/Slack style.
//!
//! # Scheme
//! The chat connector sends every webhook request with the header
//!
//! ```text
//! X-Sendlater-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
//! ```
//!
//! where `<body>` is the exact request body bytes and the hex digest is lowercase.
//! A receiver verifies it by
//! 1. splitting the header on `,` and taking `t` and every `v1` (more than one `v1` may
//!    appear while a secret is being rotated; one matching is enough),
//! 2. computing `HMAC-SHA256(secret, t + "." + body)` and comparing it with a `v1` in
//!    constant time,
//! 3. rejecting a `t` further than its tolerance (e.g. 5 minutes) from its own clock, so a
//!    captured request cannot be replayed later.
//!
//! Deduplication is separate: the `Idempotency-Key` header carries the item id, identical
//! on every attempt of the same item. [`verify`] implements the receiver side for Rust
//! receivers and for tests.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Name of the signature header.
pub const SIGNATURE_HEADER: &str = "x-sendlater-signature";

type HmacSha256 = Hmac<Sha256>;

/// The header value `t=<timestamp>,v1=<hex>` for `body` signed with `secret` at
/// `timestamp` (unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mac = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex(&mac))
}

/// Why a signature was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header lacks `t=` or `v1=`, or `t` is not an integer.
    #[error("malformed signature header")]
    Malformed,
    /// `t` is further than the tolerance from the receiver's clock.
    #[error("signature timestamp {timestamp} is outside the tolerance")]
    Stale {
        /// The timestamp the header carried.
        timestamp: i64,
    },
    /// No `v1` matches the body and secret.
    #[error("signature does not match")]
    Mismatch,
}

/// Checks a signature header against `body`, `secret` and the receiver's clock `now`
/// (unix seconds), accepting timestamps at most `tolerance_secs` away.
///
/// # Errors
/// [`SignatureError`] naming why the header is rejected.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => {
                timestamp = Some(v.parse::<i64>().map_err(|_| SignatureError::Malformed)?)
            }
            Some(("v1", v)) => candidates.push(v),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now.abs_diff(timestamp) > tolerance_secs.unsigned_abs() {
        return Err(SignatureError::Stale { timestamp });
    }
    let ok = candidates.iter().any(|c| {
        unhex(c).is_some_and(|bytes| mac(secret, timestamp, body).verify_slice(&bytes).is_ok())
    });
    if ok {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test";
    const BODY: &[u8] = br#"{"item_id":"itm_1"}"#;
    const T: i64 = 1_795_608_000;
    /// Computed independently: python3 -c 'import hmac,hashlib;
    /// print(hmac.new(b"whsec_test", b"1795608000.{\"item_id\":\"itm_1\"}", hashlib.sha256).hexdigest())'
    const KNOWN: &str = "405ce97a3c681ed2d0a0e6acb3ee912a0d6a14f10c1204b36de38f075dd13d59";

    #[test]
    fn the_signature_matches_a_known_vector() {
        assert_eq!(sign(SECRET, T, BODY), format!("t={T},v1={KNOWN}"));
    }

    #[test]
    fn a_signature_verifies_with_the_same_secret_and_body() {
        let h = sign(SECRET, T, BODY);
        assert_eq!(verify(SECRET, &h, BODY, T + 10, 300), Ok(()));
    }

    #[test]
    fn a_changed_body_or_secret_is_a_mismatch() {
        let h = sign(SECRET, T, BODY);
        assert_eq!(
            verify(SECRET, &h, b"{}", T, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"other", &h, BODY, T, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn an_old_timestamp_is_stale() {
        let h = sign(SECRET, T, BODY);
        assert_eq!(
            verify(SECRET, &h, BODY, T + 301, 300),
            Err(SignatureError::Stale { timestamp: T })
        );
    }

    #[test]
    fn one_matching_v1_among_several_is_enough() {
        let h = format!("t={T},v1=00ff,v1={KNOWN}");
        assert_eq!(verify(SECRET, &h, BODY, T, 300), Ok(()));
    }

    #[test]
    fn malformed_headers_are_rejected() {
        for h in ["", "v1=00", "t=abc,v1=00", "t=1"] {
            assert_eq!(
                verify(SECRET, h, BODY, T, 300),
                Err(SignatureError::Malformed),
                "{h:?}"
            );
        }
    }
}
