//! Bearer-token authentication and account authorisation (API.md "Auth").
//!
//! An interceptor on the Scheduler and Dispatch services reads
//! `authorization: Bearer <token>`, finds the configured token by constant-time
//! comparison, and puts the caller's [`Identity`] into the request extensions. Handlers
//! then check the role and every account the request names *before* any lookup, so a
//! token can never probe another account's items by their NOT_FOUND answers. With no
//! tokens configured the service is open (everything allowed). Tokens are never logged.

use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::config::{Accounts, Role, TokenConfig};

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
}

/// The configured tokens; cheap to clone.
#[derive(Clone, Default)]
pub struct Auth {
    tokens: Arc<Vec<TokenConfig>>,
}

/// Compares in time independent of where the inputs differ (length aside).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    pub fn new(tokens: Vec<TokenConfig>) -> Self {
        Auth {
            tokens: Arc::new(tokens),
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
        let id = self
            .auth
            .identify(token.trim())
            .ok_or_else(|| Status::unauthenticated("authorization: unknown token"))?;
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
}
