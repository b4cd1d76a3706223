//! Bearer-token authentication and account authorisation (API.md "Auth").
//!
//! An interceptor on the Scheduler and Dispatch services reads
//! `authorization: Bearer <token>`, finds the configured token by constant-time
//! comparison, and puts the caller's [`Identity`] into the request extensions. Handlers
//! then check the role and every account the request names *before* any lookup, so a
//! token can never probe another account's items by their NOT_FOUND answers. With no
//! tokens configured the service is open (everything allowed). Tokens are never logged.
//!
//! Guessing is slowed per peer address ([`Backoff`]): after [`FREE_FAILURES`] unknown
//! tokens from one address (IPv4, or the /64 of an IPv6 address), each further one locks
//! the address out for twice as long as the last (1 s, 2 s, 4 s, ... up to 15 min). A
//! locked-out peer is answered UNAUTHENTICATED (the console: 429) without its token being
//! looked at, so even the right token waits. A failure older than
//! [`FAILURE_MEMORY_MS`] is forgotten, a success forgets them all, and the table holds at
//! most [`MAX_PEERS`] addresses. gRPC and the console's login share one table, on the
//! service's clock.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::clock::{Clock, SystemClock};
use crate::config::{Accounts, Role, TokenConfig};

/// Unknown tokens a peer may present before it is locked out.
pub const FREE_FAILURES: u32 = 5;
/// The first lockout; each further failure doubles it.
pub const FIRST_LOCKOUT_MS: i64 = 1_000;
/// The longest lockout.
pub const MAX_LOCKOUT_MS: i64 = 15 * 60_000;
/// A peer's failures are forgotten this long after its last one.
pub const FAILURE_MEMORY_MS: i64 = 60 * 60_000;
/// Peers remembered at most; beyond it the least recently failed is forgotten.
pub const MAX_PEERS: usize = 10_000;

/// What the table knows of one peer.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last_ms: i64,
    locked_until_ms: i64,
}

/// Failed authentications per peer address (see the module doc). Cheap to clone.
#[derive(Clone)]
pub struct Backoff {
    clock: Arc<dyn Clock>,
    peers: Arc<Mutex<HashMap<IpAddr, Failures>>>,
}

/// The key of a peer: an IPv4 address, or the /64 network of an IPv6 one (a host is
/// usually given a whole /64, so its addresses count as one).
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

impl Backoff {
    /// An empty table on `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Backoff {
            clock,
            peers: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Milliseconds `peer` must still wait before a token of it is looked at; `None`
    /// when it may try now.
    pub fn locked_out(&self, peer: IpAddr) -> Option<i64> {
        let now = self.clock.now_ms();
        let f = *self.lock().get(&peer_key(peer))?;
        (f.locked_until_ms > now).then(|| f.locked_until_ms - now)
    }

    /// Records an unknown token from `peer`; returns the lockout it now has (ms), if
    /// any.
    pub fn failed(&self, peer: IpAddr) -> Option<i64> {
        let now = self.clock.now_ms();
        let key = peer_key(peer);
        let mut peers = self.lock();
        if !peers.contains_key(&key) && peers.len() >= MAX_PEERS {
            peers.retain(|_, f| now - f.last_ms < FAILURE_MEMORY_MS || f.locked_until_ms > now);
            if peers.len() >= MAX_PEERS {
                if let Some(oldest) = peers.iter().min_by_key(|(_, f)| f.last_ms).map(|(k, _)| *k) {
                    peers.remove(&oldest);
                }
            }
        }
        let f = peers.entry(key).or_insert(Failures {
            count: 0,
            last_ms: now,
            locked_until_ms: i64::MIN,
        });
        if now - f.last_ms >= FAILURE_MEMORY_MS {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last_ms = now;
        let over = f.count.saturating_sub(FREE_FAILURES);
        if over == 0 {
            return None;
        }
        let lockout = FIRST_LOCKOUT_MS
            .saturating_mul(1_i64 << (over - 1).min(30))
            .min(MAX_LOCKOUT_MS);
        f.locked_until_ms = now.saturating_add(lockout);
        tracing::warn!(peer = %key, failures = f.count, lockout_ms = lockout, "repeated unknown tokens; peer locked out");
        Some(lockout)
    }

    /// A token of `peer` was right: its failures are forgotten.
    pub fn succeeded(&self, peer: IpAddr) {
        self.lock().remove(&peer_key(peer));
    }

    /// Peers remembered (for tests of the bound).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no peer is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why [`Auth::identify_from`] found no identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not one of ours.
    Unknown,
    /// The peer is locked out for this many more milliseconds; the token was not
    /// looked at.
    LockedOut(i64),
}

impl Refusal {
    /// The UNAUTHENTICATED status of a gRPC call.
    pub fn status(self) -> Status {
        match self {
            Refusal::Unknown => Status::unauthenticated("authorization: unknown token"),
            Refusal::LockedOut(ms) => Status::unauthenticated(format!(
                "authorization: too many unknown tokens from this address; retry in {} s",
                (ms + 999) / 1000
            )),
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Identity {
    pub role: Role,
    pub accounts: Accounts,
    /// Index of the token in the config (for logs; never the token itself).
    pub token_index: Option<usize>,
}

impl Identity {
    /// The identity of every caller when no tokens are configured.
    pub fn open() -> Self {
        Identity {
            role: Role::Admin,
            accounts: Accounts::All,
            token_index: None,
        }
    }
}

/// Which service a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Scheduler,
    Dispatch,
    /// `GetClusterStatus`: admin tokens only.
    Cluster,
}

/// The configured tokens and the failure table; cheap to clone.
#[derive(Clone)]
pub struct Auth {
    tokens: Arc<Vec<TokenConfig>>,
    backoff: Backoff,
}

impl Default for Auth {
    fn default() -> Self {
        Auth::new(Vec::new())
    }
}

/// Compares in time independent of where the inputs differ (length aside).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    /// These tokens, failures counted on the system clock.
    pub fn new(tokens: Vec<TokenConfig>) -> Self {
        Auth::with_clock(tokens, Arc::new(SystemClock))
    }

    /// These tokens, failures counted on `clock` (the service's clock).
    pub fn with_clock(tokens: Vec<TokenConfig>, clock: Arc<dyn Clock>) -> Self {
        Auth {
            tokens: Arc::new(tokens),
            backoff: Backoff::new(clock),
        }
    }

    /// The per-peer failure table.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// [`Auth::identify`] for a caller at `peer` (when known): a locked-out peer is
    /// refused without its token being looked at, an unknown token counts against the
    /// peer, a known one clears its failures.
    ///
    /// # Errors
    /// [`Refusal`]: unknown token, or locked out.
    pub fn identify_from(
        &self,
        presented: &str,
        peer: Option<IpAddr>,
    ) -> Result<Identity, Refusal> {
        if let Some(ms) = peer.and_then(|p| self.backoff.locked_out(p)) {
            return Err(Refusal::LockedOut(ms));
        }
        match (self.identify(presented), peer) {
            (Some(id), Some(p)) => {
                self.backoff.succeeded(p);
                Ok(id)
            }
            (Some(id), None) => Ok(id),
            (None, Some(p)) => Err(self
                .backoff
                .failed(p)
                .map_or(Refusal::Unknown, Refusal::LockedOut)),
            (None, None) => Err(Refusal::Unknown),
        }
    }

    /// Whether any token is configured.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The identity behind a presented token, if it is one of ours. Every configured
    /// token is compared, so the time taken does not say which one matched.
    pub fn identify(&self, presented: &str) -> Option<Identity> {
        let mut found = None;
        for (i, t) in self.tokens.iter().enumerate() {
            if ct_eq(t.token.as_bytes(), presented.as_bytes()) && found.is_none() {
                found = Some(Identity {
                    role: t.role,
                    accounts: t.accounts.clone(),
                    token_index: Some(i),
                });
            }
        }
        found
    }

    /// The interceptor for one service.
    pub fn interceptor(&self, service: Service) -> AuthInterceptor {
        AuthInterceptor {
            auth: self.clone(),
            service,
        }
    }
}

/// Authenticates each request of a service; see the module doc.
#[derive(Clone)]
pub struct AuthInterceptor {
    auth: Auth,
    service: Service,
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if !self.auth.enabled() {
            req.extensions_mut().insert(Identity::open());
            return Ok(req);
        }
        let header = req
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("authorization: a bearer token is required"))?;
        let value = header
            .to_str()
            .map_err(|_| Status::unauthenticated("authorization: malformed header"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization: expected `Bearer <token>`"))?;
        let peer = req.remote_addr().map(|a: SocketAddr| a.ip());
        let id = self
            .auth
            .identify_from(token.trim(), peer)
            .map_err(Refusal::status)?;
        let allowed = matches!(
            (id.role, self.service),
            (Role::Admin, _)
                | (Role::Backend, Service::Scheduler)
                | (Role::Connector, Service::Dispatch)
        );
        if !allowed {
            return Err(Status::permission_denied(format!(
                "this token's role may not call the {:?} service",
                self.service
            )));
        }
        req.extensions_mut().insert(id);
        Ok(req)
    }
}

/// The caller's identity (set by the interceptor).
///
/// # Errors
/// `UNAUTHENTICATED` when the interceptor did not run (a wiring bug, refused safely).
pub fn identity<T>(req: &Request<T>) -> Result<Identity, Status> {
    req.extensions()
        .get::<Identity>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("authorization: no identity"))
}

/// Checks that the caller may touch `account`.
///
/// # Errors
/// `PERMISSION_DENIED` naming the account.
pub fn check_account(id: &Identity, account: &str) -> Result<(), Status> {
    if id.accounts.allows(account) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "account_id: this token may not access account {account:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(vec![
            TokenConfig {
                token: "back".into(),
                role: Role::Backend,
                accounts: Accounts::Only(vec!["acme".into()]),
            },
            TokenConfig {
                token: "conn".into(),
                role: Role::Connector,
                accounts: Accounts::All,
            },
        ])
    }

    fn call(service: Service, header: Option<&str>) -> Result<Identity, Status> {
        let mut req = Request::new(());
        if let Some(h) = header {
            req.metadata_mut()
                .insert("authorization", h.parse().unwrap());
        }
        let req = auth().interceptor(service).call(req)?;
        identity(&req)
    }

    #[test]
    fn tokens_map_to_roles_and_accounts() {
        let id = call(Service::Scheduler, Some("Bearer back")).unwrap();
        assert_eq!(id.role, Role::Backend);
        assert!(check_account(&id, "acme").is_ok());
        assert_eq!(
            check_account(&id, "other").unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
    }

    #[test]
    fn missing_or_unknown_tokens_are_unauthenticated() {
        for h in [None, Some("Bearer nope"), Some("Basic back"), Some("back")] {
            assert_eq!(
                call(Service::Scheduler, h).unwrap_err().code(),
                tonic::Code::Unauthenticated,
                "{h:?}"
            );
        }
    }

    #[test]
    fn a_token_used_outside_its_role_is_denied() {
        assert_eq!(
            call(Service::Dispatch, Some("Bearer back"))
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            call(Service::Scheduler, Some("Bearer conn"))
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
        assert!(call(Service::Dispatch, Some("Bearer conn")).is_ok());
    }

    #[test]
    fn constant_time_compare_is_plain_equality() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
    }

    #[test]
    fn token_debug_output_never_shows_the_secret() {
        let t = TokenConfig {
            token: "s3cret".into(),
            role: Role::Admin,
            accounts: Accounts::All,
        };
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    fn backoff() -> (crate::clock::ManualClock, Auth) {
        let clock = crate::clock::ManualClock::new(1_000_000);
        let a = Auth::with_clock(auth().tokens.to_vec(), Arc::new(clock.clone()));
        (clock, a)
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    #[test]
    fn after_the_free_failures_a_peer_is_locked_out_for_doubling_times_even_with_the_right_token() {
        let (clock, a) = backoff();
        for _ in 0..FREE_FAILURES {
            assert_eq!(
                a.identify_from("nope", Some(PEER)).unwrap_err(),
                Refusal::Unknown
            );
        }
        assert_eq!(
            a.identify_from("nope", Some(PEER)).unwrap_err(),
            Refusal::LockedOut(FIRST_LOCKOUT_MS)
        );
        // Locked out: the right token is not even looked at.
        assert!(matches!(
            a.identify_from("back", Some(PEER)),
            Err(Refusal::LockedOut(_))
        ));
        // Another address is not affected.
        let other = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 8));
        assert!(a.identify_from("back", Some(other)).is_ok());
        clock.advance(std::time::Duration::from_millis(FIRST_LOCKOUT_MS as u64));
        // The next failure doubles the lockout.
        assert_eq!(
            a.identify_from("nope", Some(PEER)).unwrap_err(),
            Refusal::LockedOut(2 * FIRST_LOCKOUT_MS)
        );
        clock.advance(std::time::Duration::from_millis(
            2 * FIRST_LOCKOUT_MS as u64 - 1,
        ));
        assert!(a.identify_from("back", Some(PEER)).is_err(), "still locked");
        clock.advance(std::time::Duration::from_millis(1));
        assert!(a.identify_from("back", Some(PEER)).is_ok());
        // The success forgot the failures: a wrong token is merely unknown again.
        assert_eq!(
            a.identify_from("nope", Some(PEER)).unwrap_err(),
            Refusal::Unknown
        );
    }

    #[test]
    fn lockouts_stop_growing_at_the_cap_and_failures_are_forgotten_after_an_hour() {
        let (clock, a) = backoff();
        let mut last = None;
        for _ in 0..FREE_FAILURES + 40 {
            last = a.backoff().failed(PEER);
        }
        assert_eq!(last, Some(MAX_LOCKOUT_MS));
        clock.advance(std::time::Duration::from_millis(FAILURE_MEMORY_MS as u64));
        assert_eq!(a.backoff().failed(PEER), None, "counting starts over");
    }

    #[test]
    fn the_addresses_of_one_ipv6_64_count_as_one_peer() {
        let (_clock, a) = backoff();
        for i in 0..=FREE_FAILURES {
            let ip: IpAddr = format!("2001:db8:1:2::{:x}", i + 1).parse().unwrap();
            a.backoff().failed(ip);
        }
        let sibling: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert!(a.backoff().locked_out(sibling).is_some());
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(a.backoff().locked_out(elsewhere).is_none());
    }

    #[test]
    fn the_failure_table_is_bounded() {
        let (_clock, a) = backoff();
        for i in 0..MAX_PEERS as u32 + 100 {
            a.backoff()
                .failed(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
        }
        assert_eq!(a.backoff().len(), MAX_PEERS);
    }
}
