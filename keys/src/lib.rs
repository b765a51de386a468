//! Release keys: ed25519 key pairs and signatures in minisign's exact file formats, so stock
//! `minisign -V` verifies what we sign and keys made by `minisign -G -W` sign with us.
//! Secret key material is never printed: no type here implements `Display` for it and `Debug` redacts it.

mod error;
mod pubkey;
mod seckey;
mod signature;
mod trust;

pub use error::Error;
pub use pubkey::{KeyId, PublicKey};
pub use seckey::{generate, write_keypair, SecretKey, SECRET_KEY_ENV};
pub use signature::Signature;
pub use trust::TrustedKeys;

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn b64_decode(what: &'static str, line: &str) -> Result<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(line.trim())
        .map_err(|e| Error::Malformed {
            what,
            detail: format!("bad base64: {e}"),
        })
}

pub(crate) fn b64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Splits a minisign-style file into its `untrusted comment:` line and the base64 line after it.
pub(crate) fn comment_and_payload<'a>(
    what: &'static str,
    text: &'a str,
) -> Result<(&'a str, &'a str, std::str::Lines<'a>)> {
    let mut lines = text.lines();
    let comment = lines
        .next()
        .and_then(|l| l.strip_prefix("untrusted comment:"))
        .ok_or(Error::Malformed {
            what,
            detail: "first line must start with `untrusted comment:`".into(),
        })?;
    let payload = lines.next().ok_or(Error::Malformed {
        what,
        detail: "missing the base64 line".into(),
    })?;
    Ok((comment.trim_start(), payload, lines))
}
