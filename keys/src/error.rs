//! Errors an operator can act on: each names the key or file involved and, where there is one, the fix.

use std::path::PathBuf;

/// What can go wrong loading keys, signing or verifying.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("signed by key {key_id}, which is not in the trusted key set; install its .pub file in the keys directory if you trust it")]
    UntrustedKey { key_id: String },
    #[error("signed by key {key_id}, which has been revoked")]
    RevokedKey { key_id: String },
    #[error("bad signature: {0}")]
    BadSignature(&'static str),
    #[error(
        "secret key {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    InsecureSecretKey { path: String, mode: u32 },
    #[error("secret key is encrypted with a password; create an unencrypted one with `comfy-build keygen` or `minisign -G -W`")]
    EncryptedSecretKey,
    #[error("refusing to overwrite existing key file {0}")]
    Exists(PathBuf),
    #[error("no trusted keys found in {0}")]
    NoTrustedKeys(PathBuf),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
