//! End users: the tokens a business line's own account system issues, and how the platform
//! verifies them.
//!
//! A terminal or app never holds the tenant credential (that belongs to the business line's
//! backend). It presents a JWT in `authorization: Bearer ...`, signed by its business line
//! with keys named in the tenant file's `[users]` table:
//!
//! ```toml
//! [users]
//! issuer = "https://accounts.mall.example"   # the `iss` every token must carry
//! audience = "mall"                          # the `aud` every token must carry (default: the tenant id)
//! # exactly one key source:
//! public_key_file = "keys/mall.pem"          # RS256, ES256 or EdDSA (with `algorithm`)
//! algorithm = "ES256"
//! # jwks_file = "keys/mall.jwks.json"        # a JWKS document (keys picked by `kid`)
//! # hs256_secret_env = "MESH_MALL_USER_SECRET"
//! # hs256_secret = "..."                     # development only
//! ```
//!
//! The token's `sub` is the user; an optional `terminal` claim pins the terminal. Issuer,
//! audience, expiry (`exp`, required) and not-before are checked, with a little clock leeway.
//! Paths are relative to the tenant file.
//!
//! ```
//! use mesh_config::users::UserTokens;
//!
//! let users = UserTokens::development("mall-accounts", "a-development-secret-of-32-bytes!");
//! let verifier = users.verifier().unwrap();
//! let token = users.issue("alice", Some("phone"), 3600).unwrap();
//! let who = verifier.verify(&token).unwrap();
//! assert_eq!((who.user.as_str(), who.terminal.as_deref()), ("alice", Some("phone")));
//! ```

use std::{
    path::{Path, PathBuf},
    str::FromStr,
};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, jwk::JwkSet};
use mesh_contract::UserIdentity;
use serde::{Deserialize, Serialize};

/// The audience of [`UserTokens::development`]. A tenant file that names no audience gets its
/// tenant id ([`UserTokens::default_audience`]): two business lines sharing one account
/// system (and so one issuer) never accept each other's tokens by a shared default.
pub const DEFAULT_AUDIENCE: &str = "mesh";

/// A tenant's `[users]` table: who issues its users' tokens and with which keys.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserTokens {
    /// Required `iss` claim.
    pub issuer: String,
    /// Required `aud` claim (one of them, when the token lists several); the tenant id when
    /// the file does not say.
    #[serde(default)]
    pub audience: String,
    /// Shared HS256 secret, inline: development only.
    pub hs256_secret: Option<String>,
    /// Environment variable holding the HS256 secret.
    pub hs256_secret_env: Option<String>,
    /// PEM public key (with `algorithm`).
    pub public_key_file: Option<PathBuf>,
    /// JWKS document.
    pub jwks_file: Option<PathBuf>,
    /// Algorithm of `public_key_file`: `RS256`, `ES256` or `EdDSA`.
    pub algorithm: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
}

fn default_leeway() -> u64 {
    30
}

/// Why a user token was refused (the caller sees UNAUTHENTICATED; the reason goes to the log).
#[derive(Debug, thiserror::Error)]
pub enum UserTokenError {
    /// No key of the tenant's verifies it, or it is malformed, expired, not yet valid, or for
    /// another issuer or audience.
    #[error("user token refused: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    /// Signed with an algorithm the tenant has no key for.
    #[error("user token signed with {0:?}, which this tenant's keys do not use")]
    Algorithm(Algorithm),
    /// Its `sub` or `terminal` is not a valid id, or names the platform's own sender.
    #[error("user token names an invalid {0}")]
    Subject(&'static str),
}

/// A token's claims. `aud` may be one audience or a list (RFC 7519 4.1.3; the verifier checks
/// it holds the tenant's), and `nbf` and `iat` may be absent: account systems commonly issue
/// tokens so, and a token without `nbf` is valid from the start.
#[derive(Deserialize, Serialize)]
struct Claims {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    terminal: Option<String>,
    iss: String,
    aud: Audience,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

/// `aud` as tokens carry it: one string, or several.
#[derive(Deserialize, Serialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Verifies one tenant's user tokens.
#[derive(Clone)]
pub struct UserVerifier {
    keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
    issuer: String,
    audience: String,
    leeway: u64,
}

impl std::fmt::Debug for UserVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl UserTokens {
    /// Sets the audience to `tenant` (its id) when the file named none.
    pub fn default_audience(&mut self, tenant: &str) {
        if self.audience.is_empty() {
            self.audience = tenant.to_owned();
        }
    }

    /// Development settings: `issuer`, audience `mesh`, an inline HS256 secret.
    pub fn development(issuer: &str, secret: &str) -> Self {
        Self {
            issuer: issuer.into(),
            audience: DEFAULT_AUDIENCE.into(),
            hs256_secret: Some(secret.into()),
            leeway_secs: default_leeway(),
            ..Self::default()
        }
    }

    /// Makes relative key paths relative to `folder` (the tenant file's).
    pub fn resolve_paths(&mut self, folder: &Path) {
        for path in [&mut self.public_key_file, &mut self.jwks_file]
            .into_iter()
            .flatten()
        {
            if path.is_relative() {
                *path = folder.join(&*path);
            }
        }
    }

    fn hs256_secret(&self) -> Result<Option<String>, (&'static str, String)> {
        match (&self.hs256_secret, &self.hs256_secret_env) {
            (Some(secret), _) => Ok(Some(secret.clone())),
            (None, Some(var)) => match std::env::var(var) {
                Ok(secret) if !secret.is_empty() => Ok(Some(secret)),
                _ => Err((
                    "users.hs256_secret_env",
                    format!("environment variable {var} is not set"),
                )),
            },
            (None, None) => Ok(None),
        }
    }

    /// The verifier these settings describe; on error, the field at fault and why.
    pub fn verifier(&self) -> Result<UserVerifier, (&'static str, String)> {
        if self.issuer.trim().is_empty() {
            return Err(("users.issuer", "must not be empty".into()));
        }
        if self.audience.trim().is_empty() {
            return Err(("users.audience", "must not be empty".into()));
        }
        let sources = [
            self.hs256_secret.is_some() || self.hs256_secret_env.is_some(),
            self.public_key_file.is_some(),
            self.jwks_file.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err((
                "users",
                "set exactly one key source: public_key_file (+ algorithm), jwks_file, hs256_secret_env or, for development, hs256_secret".into(),
            ));
        }
        let mut keys = Vec::new();
        if let Some(secret) = self.hs256_secret()? {
            if secret.len() < 32 {
                return Err((
                    "users.hs256_secret",
                    "is shorter than 32 bytes; an HS256 secret must be at least as long as its hash"
                        .into(),
                ));
            }
            keys.push((
                None,
                Algorithm::HS256,
                DecodingKey::from_secret(secret.as_bytes()),
            ));
        }
        if let Some(path) = &self.public_key_file {
            let field = "users.public_key_file";
            let pem = std::fs::read(path)
                .map_err(|e| (field, format!("cannot read {}: {e}", path.display())))?;
            let algorithm = match self.algorithm.as_deref() {
                Some("RS256") => Algorithm::RS256,
                Some("ES256") => Algorithm::ES256,
                Some("EdDSA") => Algorithm::EdDSA,
                other => {
                    return Err((
                        "users.algorithm",
                        format!("{other:?}: say RS256, ES256 or EdDSA for a public key file"),
                    ));
                }
            };
            let key = match algorithm {
                Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
                Algorithm::ES256 => DecodingKey::from_ec_pem(&pem),
                _ => DecodingKey::from_ed_pem(&pem),
            }
            .map_err(|e| {
                (
                    field,
                    format!("{} is not a {algorithm:?} public key: {e}", path.display()),
                )
            })?;
            keys.push((None, algorithm, key));
        }
        if let Some(path) = &self.jwks_file {
            let field = "users.jwks_file";
            let text = std::fs::read_to_string(path)
                .map_err(|e| (field, format!("cannot read {}: {e}", path.display())))?;
            let set: JwkSet = serde_json::from_str(&text).map_err(|e| {
                (
                    field,
                    format!("{} is not a JWKS document: {e}", path.display()),
                )
            })?;
            for jwk in &set.keys {
                let algorithm = jwk
                    .common
                    .key_algorithm
                    .and_then(|a| Algorithm::from_str(&a.to_string()).ok())
                    .ok_or_else(|| {
                        (
                            field,
                            format!("a key in {} has no usable `alg`", path.display()),
                        )
                    })?;
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| (field, format!("a key in {}: {e}", path.display())))?;
                keys.push((jwk.common.key_id.clone(), algorithm, key));
            }
            if keys.is_empty() {
                return Err((field, format!("{} holds no key", path.display())));
            }
        }
        Ok(UserVerifier {
            keys,
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            leeway: self.leeway_secs,
        })
    }

    /// Signs a token for `user` (valid `ttl_secs` from now) with the HS256 development secret:
    /// what `mesh token issue` and the tests use. Business lines issue their own tokens.
    pub fn issue(
        &self,
        user: &str,
        terminal: Option<&str>,
        ttl_secs: u64,
    ) -> Result<String, (&'static str, String)> {
        let secret = self.hs256_secret()?.ok_or((
            "users",
            "has no HS256 secret; only a development secret can issue tokens here (the business line's account system signs with its private key)".into(),
        ))?;
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: user.into(),
            terminal: terminal.map(str::to_owned),
            iss: self.issuer.clone(),
            aud: Audience::One(self.audience.clone()),
            exp: now + ttl_secs,
            nbf: Some(now.saturating_sub(1)),
            iat: Some(now),
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .map_err(|e| ("users", e.to_string()))
    }
}

impl UserVerifier {
    /// The user (and terminal) a token vouches for.
    pub fn verify(&self, token: &str) -> Result<UserIdentity, UserTokenError> {
        let header = jsonwebtoken::decode_header(token)?;
        let mut last = None;
        for (kid, algorithm, key) in &self.keys {
            if *algorithm != header.alg
                || (header.kid.is_some() && kid.is_some() && *kid != header.kid)
            {
                continue;
            }
            let mut validation = Validation::new(*algorithm);
            validation.set_issuer(&[&self.issuer]);
            validation.set_audience(&[&self.audience]);
            validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
            validation.validate_nbf = true;
            validation.leeway = self.leeway;
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return identity(data.claims),
                Err(err) => last = Some(err),
            }
        }
        Err(match last {
            Some(err) => err.into(),
            None => UserTokenError::Algorithm(header.alg),
        })
    }
}

fn identity(claims: Claims) -> Result<UserIdentity, UserTokenError> {
    let valid = |id: &str| mesh_contract::fields::id("user", id).is_ok();
    // the platform's sender and third-party channels' users are the mesh's to name, never a
    // token's
    if !valid(&claims.sub)
        || mesh_contract::fields::is_reserved_sender(&claims.sub)
        || mesh_contract::fields::is_channel_user(&claims.sub)
    {
        return Err(UserTokenError::Subject("sub"));
    }
    if let Some(terminal) = &claims.terminal
        && !valid(terminal)
    {
        return Err(UserTokenError::Subject("terminal"));
    }
    Ok(UserIdentity {
        user: claims.sub,
        terminal: claims.terminal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-development-secret-of-some-length";

    /// A token signed with `SECRET`, carrying exactly `claims`.
    fn token(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn tokens_as_account_systems_issue_them_are_accepted_and_checked_alike() {
        let verifier = UserTokens::development("accounts", SECRET)
            .verifier()
            .unwrap();
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        // no nbf, no iat; aud a list holding ours
        let bare = token(serde_json::json!({
            "sub": "alice", "iss": "accounts", "aud": ["other-app", DEFAULT_AUDIENCE], "exp": exp,
        }));
        assert_eq!(verifier.verify(&bare).unwrap().user, "alice");
        // aud a string, nbf and iat given
        let full = token(serde_json::json!({
            "sub": "bob", "iss": "accounts", "aud": DEFAULT_AUDIENCE, "exp": exp,
            "nbf": exp - 700, "iat": exp - 700,
        }));
        assert_eq!(verifier.verify(&full).unwrap().user, "bob");
        // a list without ours, a token not yet valid, one without exp: refused as before
        for refused in [
            serde_json::json!({ "sub": "eve", "iss": "accounts", "aud": ["other-app"], "exp": exp }),
            serde_json::json!({ "sub": "eve", "iss": "accounts", "aud": DEFAULT_AUDIENCE, "exp": exp, "nbf": exp }),
            serde_json::json!({ "sub": "eve", "iss": "accounts", "aud": DEFAULT_AUDIENCE }),
        ] {
            assert!(
                verifier.verify(&token(refused.clone())).is_err(),
                "{refused}"
            );
        }
        // and the development tokens still carry nbf and iat
        let issued = UserTokens::development("accounts", SECRET)
            .issue("carol", None, 60)
            .unwrap();
        assert_eq!(verifier.verify(&issued).unwrap().user, "carol");
    }
}
