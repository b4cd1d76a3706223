//! Webhook signatures: HMAC-SHA256 over a timestamp, the idempotency key and the body,
//! Stripe/Slack style.
//!
//! # Scheme
//! The chat connector sends every webhook request with the headers
//!
//! ```text
//! Idempotency-Key: <item id>
//! X-Sendlater-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>,v2=<hex HMAC-SHA256(secret, "<t>.<idempotency key>.<body>")>
//! ```
//!
//! where `<body>` is the exact request body bytes, `<idempotency key>` the exact value of
//! the `Idempotency-Key` header (an item id such as `itm_42`: ASCII, no `.`), and the hex
//! digests are lowercase. `v2` is the one to check: `v1` does not cover the
//! Idempotency-Key, so a captured request replayed with another key inside the tolerance
//! would pass a receiver that deduplicates on the key; `v1` stays for receivers written
//! against it.
//!
//! A receiver verifies `v2` by
//! 1. splitting the header on `,` and taking `t` and every `v2` (more than one may appear
//!    while a secret is being rotated; one matching is enough),
//! 2. computing `HMAC-SHA256(secret, t + "." + idempotency_key + "." + body)` and
//!    comparing it with a `v2` in constant time,
//! 3. rejecting a `t` further than its tolerance (e.g. 5 minutes) from its own clock, so a
//!    captured request cannot be replayed later, and
//! 4. then deduplicating on the (now authenticated) Idempotency-Key, identical on every
//!    attempt of the same item.
//!
//! [`verify_v2`] (and [`verify`] for `v1`) implement the receiver side for Rust receivers
//! and for tests.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Name of the signature header.
pub const SIGNATURE_HEADER: &str = "x-sendlater-signature";

type HmacSha256 = Hmac<Sha256>;

/// The header value `t=<timestamp>,v1=<hex>` for `body` signed with `secret` at
/// `timestamp` (unix seconds): the `v1` scheme alone.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mac = mac(secret, timestamp, None, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex(&mac))
}

/// The header value `t=<timestamp>,v1=<hex>,v2=<hex>` the chat connector sends: `v2`
/// also covers `idempotency_key` (the `Idempotency-Key` header's value).
pub fn sign_with_key(secret: &[u8], timestamp: i64, idempotency_key: &str, body: &[u8]) -> String {
    let v2 = mac(secret, timestamp, Some(idempotency_key), body)
        .finalize()
        .into_bytes();
    format!("{},v2={}", sign(secret, timestamp, body), hex(&v2))
}

/// Why a signature was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header lacks `t=` or the scheme's `v1=` / `v2=`, or `t` is not an integer.
    #[error("malformed signature header")]
    Malformed,
    /// `t` is further than the tolerance from the receiver's clock.
    #[error("signature timestamp {timestamp} is outside the tolerance")]
    Stale {
        /// The timestamp the header carried.
        timestamp: i64,
    },
    /// No `v1` (`v2`) matches the body (and key) and secret.
    #[error("signature does not match")]
    Mismatch,
}

/// Checks the `v1` signature of a header against `body`, `secret` and the receiver's
/// clock `now` (unix seconds), accepting timestamps at most `tolerance_secs` away.
/// `v1` does not cover the Idempotency-Key: prefer [`verify_v2`].
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
    check(secret, header, None, body, now, tolerance_secs)
}

/// Checks the `v2` signature of a header against `idempotency_key` (the request's
/// `Idempotency-Key` value), `body`, `secret` and the receiver's clock `now` (unix
/// seconds), accepting timestamps at most `tolerance_secs` away.
///
/// # Errors
/// [`SignatureError`] naming why the header is rejected; a header with only `v1` is
/// [`SignatureError::Malformed`].
pub fn verify_v2(
    secret: &[u8],
    header: &str,
    idempotency_key: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    check(
        secret,
        header,
        Some(idempotency_key),
        body,
        now,
        tolerance_secs,
    )
}

fn check(
    secret: &[u8],
    header: &str,
    key: Option<&str>,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let scheme = if key.is_some() { "v2" } else { "v1" };
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => {
                timestamp = Some(v.parse::<i64>().map_err(|_| SignatureError::Malformed)?)
            }
            Some((s, v)) if s == scheme => candidates.push(v),
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
        unhex(c).is_some_and(|bytes| {
            mac(secret, timestamp, key, body)
                .verify_slice(&bytes)
                .is_ok()
        })
    });
    if ok {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// HMAC-SHA256 over `"<t>.<body>"` (v1) or `"<t>.<key>.<body>"` (v2).
fn mac(secret: &[u8], timestamp: i64, key: Option<&str>, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    if let Some(key) = key {
        mac.update(key.as_bytes());
        mac.update(b".");
    }
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
    /// The v2 vector, computed independently: python3 -c 'import hmac,hashlib;
    /// print(hmac.new(b"whsec_test", b"1795608000.itm_1.{\"item_id\":\"itm_1\"}", hashlib.sha256).hexdigest())'
    const KNOWN_V2: &str = "0844976c4c5dab6e9bbf1f41189cb9a92d5dbed1da3643ae10e305c06dadc877";

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

    #[test]
    fn the_v2_signature_matches_a_known_vector_and_keeps_v1() {
        assert_eq!(
            sign_with_key(SECRET, T, "itm_1", BODY),
            format!("t={T},v1={KNOWN},v2={KNOWN_V2}")
        );
    }

    #[test]
    fn a_v2_signature_verifies_only_with_the_same_idempotency_key() {
        let h = sign_with_key(SECRET, T, "itm_1", BODY);
        assert_eq!(verify_v2(SECRET, &h, "itm_1", BODY, T + 10, 300), Ok(()));
        assert_eq!(
            verify(SECRET, &h, BODY, T, 300),
            Ok(()),
            "v1 still verifies"
        );
        assert_eq!(
            verify_v2(SECRET, &h, "itm_2", BODY, T, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_v2(SECRET, &h, "itm_1", b"{}", T, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_v2(b"other", &h, "itm_1", BODY, T, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_v2(SECRET, &h, "itm_1", BODY, T + 301, 300),
            Err(SignatureError::Stale { timestamp: T })
        );
    }

    #[test]
    fn a_header_without_v2_is_malformed_for_verify_v2() {
        let h = sign(SECRET, T, BODY);
        assert_eq!(
            verify_v2(SECRET, &h, "itm_1", BODY, T, 300),
            Err(SignatureError::Malformed)
        );
        // Nor does a v1 digest count as a v2 one, or the other way round.
        let swapped = format!("t={T},v2={KNOWN}");
        assert_eq!(
            verify_v2(SECRET, &swapped, "itm_1", BODY, T, 300),
            Err(SignatureError::Mismatch)
        );
        let swapped = format!("t={T},v1={KNOWN_V2}");
        assert_eq!(
            verify(SECRET, &swapped, BODY, T, 300),
            Err(SignatureError::Mismatch)
        );
    }
}
