//! minisign public keys: `untrusted comment:` line, then base64(`Ed` || key id[8] || ed25519 public key[32]).

use crate::{b64_decode, b64_encode, comment_and_payload, Error, Result};
use ed25519_dalek::VerifyingKey;
use std::fmt;
use std::path::Path;

/// The 8-byte key number minisign stores with keys and signatures.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    /// minisign prints the key number as a little-endian u64 in upper-case hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", u64::from_le_bytes(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A release verification key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub id: KeyId,
    pub key: VerifyingKey,
}

impl PublicKey {
    /// Parses the text of a `.pub` file as written by `minisign -G` or [`crate::write_keypair`].
    pub fn parse(text: &str) -> Result<Self> {
        const WHAT: &str = "public key";
        let (_, payload, _) = comment_and_payload(WHAT, text)?;
        Self::from_base64(payload)
    }

    /// Parses just the base64 line (what `minisign -P` takes on the command line).
    pub fn from_base64(line: &str) -> Result<Self> {
        const WHAT: &str = "public key";
        let raw = b64_decode(WHAT, line)?;
        if raw.len() != 42 {
            return Err(Error::Malformed {
                what: WHAT,
                detail: format!("expected 42 bytes, found {}", raw.len()),
            });
        }
        if &raw[..2] != b"Ed" {
            return Err(Error::Malformed {
                what: WHAT,
                detail: "not an Ed25519 key".into(),
            });
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&raw[2..10]);
        let mut pk = [0u8; 32];
        pk.copy_from_slice(&raw[10..42]);
        let key = VerifyingKey::from_bytes(&pk).map_err(|_| Error::Malformed {
            what: WHAT,
            detail: "not a valid Ed25519 point".into(),
        })?;
        Ok(Self { id: KeyId(id), key })
    }

    /// Reads and parses a `.pub` file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = fs_err::read_to_string(path)?;
        Self::parse(&text).map_err(|e| match e {
            Error::Malformed { what, detail } => Error::Malformed {
                what,
                detail: format!("{}: {detail}", path.display()),
            },
            other => other,
        })
    }

    /// The base64 line alone.
    pub fn to_base64(&self) -> String {
        let mut raw = Vec::with_capacity(42);
        raw.extend_from_slice(b"Ed");
        raw.extend_from_slice(&self.id.0);
        raw.extend_from_slice(self.key.as_bytes());
        b64_encode(&raw)
    }

    /// The whole `.pub` file, in minisign's layout.
    pub fn to_file_string(&self) -> String {
        format!(
            "untrusted comment: minisign public key {}\n{}\n",
            self.id,
            self.to_base64()
        )
    }
}
