//! The `native` identity provider: people a tenant's directory holds sign in with a password,
//! kept as an argon2id hash, and, when enrolled, a TOTP code (RFC 6238: SHA-1, 6 digits,
//! 30-second steps, one step of clock skew either way).
//!
//! Hashing is deliberately slow (argon2's defaults, the OWASP recommendation: 19 MiB, two
//! passes); callers run it off the async runtime and bound how many run at once.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use totp_rs::{Algorithm, TOTP};
use zeroize::Zeroizing;

/// Shortest password accepted (NIST SP 800-63B asks for at least 8 characters).
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password accepted, so hashing cost stays bounded.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Bytes of a TOTP secret (160 bits, RFC 4226's recommendation).
pub const TOTP_SECRET_BYTES: usize = 20;
const TOTP_STEP_S: u64 = 30;
const TOTP_DIGITS: usize = 6;

#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error("a password has {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_BYTES} bytes")]
    PasswordLength,
    #[error("hashing the password failed: {0}")]
    Hash(String),
    #[error("the stored password hash is unreadable")]
    CorruptHash,
    #[error("the TOTP secret is unusable: {0}")]
    Totp(String),
}

/// Hashes a new password with argon2id and a fresh salt, as a PHC string.
pub fn hash_password(password: &str) -> Result<String, NativeError> {
    if password.chars().count() < MIN_PASSWORD_CHARS || password.len() > MAX_PASSWORD_BYTES {
        return Err(NativeError::PasswordLength);
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| NativeError::Hash(e.to_string()))
}

/// Whether `password` matches the stored hash (in constant time, as argon2 compares).
pub fn verify_password(password: &str, stored: &str) -> Result<bool, NativeError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Ok(false);
    }
    let parsed = PasswordHash::new(stored).map_err(|_| NativeError::CorruptHash)?;
    Ok(Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// A hash no password matches, verified when a person is unknown so that the answer takes as
/// long as for a known one.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        let random: [u8; 32] = rand::random();
        Argon2::default()
            .hash_password(&random, &salt)
            .map(|h| h.to_string())
            .expect("argon2 hashes 32 bytes with default parameters")
    })
}

/// A new random TOTP secret.
pub fn new_totp_secret() -> Zeroizing<Vec<u8>> {
    let secret: [u8; TOTP_SECRET_BYTES] = rand::random();
    Zeroizing::new(secret.to_vec())
}

fn totp(secret: &[u8], issuer: &str, account: &str) -> Result<TOTP, NativeError> {
    TOTP::new(Algorithm::SHA1, TOTP_DIGITS, 1, TOTP_STEP_S, secret.to_vec(), Some(issuer.into()), account.into())
        .map_err(|e| NativeError::Totp(e.to_string()))
}

/// The `otpauth://` URI an authenticator app enrolls from (often shown as a QR code).
pub fn totp_uri(secret: &[u8], issuer: &str, account: &str) -> Result<String, NativeError> {
    Ok(totp(secret, issuer, account)?.get_url())
}

/// The base32 form of a secret, for typing into an authenticator app.
pub fn totp_secret_base32(secret: &[u8]) -> String {
    totp_rs::Secret::Raw(secret.to_vec()).to_encoded().to_string()
}

/// The time step (Unix seconds / 30) of the code `code` at `now_s`, if it is the code of the
/// current step or of one step either side. The caller refuses steps already used.
pub fn totp_step(secret: &[u8], code: &str, now_s: u64) -> Result<Option<u64>, NativeError> {
    let totp = totp(secret, "custos", "check")?;
    let step = now_s / TOTP_STEP_S;
    let matches = |s: u64| {
        let expected = totp.generate(s * TOTP_STEP_S);
        bool::from(subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), code.as_bytes()))
    };
    // Latest first, so a code valid for two steps records the later one.
    Ok([step + 1, step, step.saturating_sub(1)].into_iter().find(|s| matches(*s)))
}

/// The code of the step containing `at_s` (for clients and tests).
pub fn totp_code(secret: &[u8], at_s: u64) -> Result<String, NativeError> {
    Ok(totp(secret, "custos", "check")?.generate(at_s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_against_their_own_hash() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &hash).unwrap());
        assert!(!verify_password("correct horsf", &hash).unwrap());
        assert!(!verify_password("anything at all", decoy_hash()).unwrap());
        assert!(matches!(hash_password("short"), Err(NativeError::PasswordLength)));
        assert!(matches!(verify_password("x", "not a hash"), Err(NativeError::CorruptHash)));
    }

    #[test]
    fn totp_codes_match_their_step_and_its_neighbours_only() {
        // RFC 6238 appendix B: the SHA-1 secret "12345678901234567890" at 59 s is 94287082
        // (8 digits); our 6 digits are its last six.
        let secret = b"12345678901234567890";
        assert_eq!(totp_code(secret, 59).unwrap(), "287082");
        assert_eq!(totp_step(secret, "287082", 59).unwrap(), Some(1));
        assert_eq!(totp_step(secret, "287082", 89).unwrap(), Some(1), "one step late is accepted");
        assert_eq!(totp_step(secret, "287082", 119).unwrap(), None, "two steps late is not");
        assert_eq!(totp_step(secret, "000000", 59).unwrap(), None);
        let uri = totp_uri(secret, "Custos acme", "alice").unwrap();
        assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    }
}
