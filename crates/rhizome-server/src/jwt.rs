//! JWT authentication: HS256 with a shared secret or RS256 with a public key. The token's `sub`
//! must equal the user id of the node id, and `exp` is enforced.

use async_trait::async_trait;
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use rhizome_core::{AuthRequest, Authenticator};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
}

/// Verifies JWTs.
pub struct JwtAuth {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth").field("algorithms", &self.validation.algorithms).finish()
    }
}

impl JwtAuth {
    /// HS256 with `secret`.
    pub fn hs256(secret: &[u8], leeway_secs: u64) -> Self {
        Self::new(DecodingKey::from_secret(secret), Algorithm::HS256, leeway_secs)
    }

    /// RS256 with a PEM public key.
    pub fn rs256(public_key_pem: &[u8], leeway_secs: u64) -> Result<Self, jsonwebtoken::errors::Error> {
        Ok(Self::new(DecodingKey::from_rsa_pem(public_key_pem)?, Algorithm::RS256, leeway_secs))
    }

    fn new(key: DecodingKey, algorithm: Algorithm, leeway_secs: u64) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.leeway = leeway_secs;
        validation.set_required_spec_claims(&["exp", "sub"]);
        JwtAuth { key, validation }
    }
}

#[async_trait]
impl Authenticator for JwtAuth {
    async fn authenticate(&self, request: &AuthRequest) -> bool {
        let (Some(token), Some(user)) = (&request.token, &request.user_id) else {
            return false;
        };
        match decode::<Claims>(token, &self.key, &self.validation) {
            Ok(data) => data.claims.sub == user.as_str(),
            Err(e) => {
                tracing::debug!(error = %e, node = %request.node_id, "token refused");
                false
            }
        }
    }
}

/// Lets everybody in: development only.
#[derive(Debug, Clone, Copy)]
pub struct OpenAuth;

#[async_trait]
impl Authenticator for OpenAuth {
    async fn authenticate(&self, _: &AuthRequest) -> bool {
        true
    }
}
