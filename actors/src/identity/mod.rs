//! Platform tokens: Custos' own JWTs, signed with keys held by key custody and published as
//! a JWKS, so gateways validate them without calling Custos.
//!
//! # Layout
//! - `signing.rs` — signing-key generation (RS256, EdDSA), sealing under the platform KEK,
//!   and the rotation plan the leader follows (publish ahead, retire after the last token).
//! - `token.rs` — [`TokenService`]: issues tokens with the active key and verifies them
//!   against the published ones; [`PlatformClaims`].
//! - `oidc.rs` — [`OidcProvider`]: the OIDC relying party (discovery, PKCE code flow, ID-token
//!   verification) and [`ExternalIdentity`], the normalised shape of an external identity.
//! - `native.rs` — the `native` provider's credentials: argon2id password hashes and TOTP.

pub mod native;
mod oidc;
pub mod signing;
mod token;

pub use oidc::{ExternalIdentity, LoginRequest, OidcError, OidcProvider, OidcSettings};
pub use token::{PlatformClaims, TokenError, TokenService, TokenSettings};
