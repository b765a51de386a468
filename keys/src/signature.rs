//! minisign signature files (4 lines): untrusted comment; base64(alg[2] || key id[8] || sig[64]);
//! trusted comment; base64(global sig[64]) over sig || trusted comment. We write only `ED`
//! (Ed25519 over BLAKE2b-512 of the data) and accept legacy `Ed` (over the raw data) on verify.

use crate::pubkey::{KeyId, PublicKey};
use crate::seckey::SecretKey;
use crate::{b64_decode, b64_encode, comment_and_payload, Error, Result};
use blake2::{Blake2b512, Digest};
use ed25519_dalek::{Signer as _, Verifier as _};

/// A parsed signature file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// `ED` (prehashed) or `Ed` (legacy).
    pub alg: [u8; 2],
    pub key_id: KeyId,
    pub sig: [u8; 64],
    pub untrusted_comment: String,
    pub trusted_comment: String,
    pub global_sig: [u8; 64],
}

fn sig64(what: &'static str, bytes: &[u8]) -> Result<[u8; 64]> {
    bytes.try_into().map_err(|_| Error::Malformed {
        what,
        detail: format!("expected 64 bytes, found {}", bytes.len()),
    })
}

impl Signature {
    /// Signs `data` prehashed (`ED`), as `minisign -S` does by default.
    pub fn sign(
        sk: &SecretKey,
        data: &[u8],
        untrusted_comment: &str,
        trusted_comment: &str,
    ) -> Result<Self> {
        for c in [untrusted_comment, trusted_comment] {
            if c.contains(['\n', '\r']) {
                return Err(Error::Malformed {
                    what: "comment",
                    detail: "comments must be one line".into(),
                });
            }
        }
        let sig = sk.signing.sign(&Blake2b512::digest(data)).to_bytes();
        let mut global = Vec::with_capacity(64 + trusted_comment.len());
        global.extend_from_slice(&sig);
        global.extend_from_slice(trusted_comment.as_bytes());
        let global_sig = sk.signing.sign(&global).to_bytes();
        Ok(Self {
            alg: *b"ED",
            key_id: sk.id,
            sig,
            untrusted_comment: untrusted_comment.to_owned(),
            trusted_comment: trusted_comment.to_owned(),
            global_sig,
        })
    }

    /// Parses a `.minisig` file.
    pub fn parse(text: &str) -> Result<Self> {
        const WHAT: &str = "signature";
        let (untrusted, payload, mut rest) = comment_and_payload(WHAT, text)?;
        let raw = b64_decode(WHAT, payload)?;
        if raw.len() != 74 {
            return Err(Error::Malformed {
                what: WHAT,
                detail: format!("expected 74 bytes, found {}", raw.len()),
            });
        }
        let alg: [u8; 2] = [raw[0], raw[1]];
        if &alg != b"ED" && &alg != b"Ed" {
            return Err(Error::Malformed {
                what: WHAT,
                detail: "unknown signature algorithm".into(),
            });
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&raw[2..10]);
        let trusted = rest
            .next()
            .and_then(|l| l.strip_prefix("trusted comment: "))
            .ok_or(Error::Malformed {
                what: WHAT,
                detail: "third line must start with `trusted comment: `".into(),
            })?;
        let global = rest.next().ok_or(Error::Malformed {
            what: WHAT,
            detail: "missing the global signature".into(),
        })?;
        if rest.any(|l| !l.trim().is_empty()) {
            return Err(Error::Malformed {
                what: WHAT,
                detail: "trailing lines".into(),
            });
        }
        Ok(Self {
            alg,
            key_id: KeyId(id),
            sig: sig64(WHAT, &raw[10..])?,
            untrusted_comment: untrusted.to_owned(),
            trusted_comment: trusted.to_owned(),
            global_sig: sig64(WHAT, &b64_decode(WHAT, global)?)?,
        })
    }

    /// The file text.
    pub fn to_file_string(&self) -> String {
        let mut raw = Vec::with_capacity(74);
        raw.extend_from_slice(&self.alg);
        raw.extend_from_slice(&self.key_id.0);
        raw.extend_from_slice(&self.sig);
        format!(
            "untrusted comment: {}\n{}\ntrusted comment: {}\n{}\n",
            self.untrusted_comment,
            b64_encode(&raw),
            self.trusted_comment,
            b64_encode(&self.global_sig)
        )
    }

    /// Checks both signatures against one key (the key id must match).
    pub fn verify_with(&self, pk: &PublicKey, data: &[u8]) -> Result<()> {
        if pk.id != self.key_id {
            return Err(Error::UntrustedKey {
                key_id: self.key_id.to_string(),
            });
        }
        let sig = ed25519_dalek::Signature::from_bytes(&self.sig);
        let ok = if &self.alg == b"ED" {
            pk.key.verify(&Blake2b512::digest(data), &sig)
        } else {
            pk.key.verify(data, &sig)
        };
        ok.map_err(|_| Error::BadSignature("the data does not match the signature"))?;
        let mut global = Vec::with_capacity(64 + self.trusted_comment.len());
        global.extend_from_slice(&self.sig);
        global.extend_from_slice(self.trusted_comment.as_bytes());
        pk.key
            .verify(
                &global,
                &ed25519_dalek::Signature::from_bytes(&self.global_sig),
            )
            .map_err(|_| Error::BadSignature("the trusted comment was altered"))
    }
}
