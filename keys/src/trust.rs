//! The trusted-key set: every `*.pub` in a directory, minus any key whose `.pub` also sits in its
//! `revoked/` subdirectory. A revoked key is refused even if it is still listed as trusted.

use crate::pubkey::{KeyId, PublicKey};
use crate::signature::Signature;
use crate::{Error, Result};
use std::path::Path;

/// Keys a host or a verifier accepts.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    trusted: Vec<PublicKey>,
    revoked: Vec<KeyId>,
}

fn pub_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for entry in fs_err::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "pub") && path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

impl TrustedKeys {
    /// A set holding exactly these keys.
    pub fn new(trusted: Vec<PublicKey>, revoked: Vec<KeyId>) -> Self {
        Self { trusted, revoked }
    }

    /// Loads `DIR/*.pub` as trusted and `DIR/revoked/*.pub` as revoked. An empty set is an error.
    pub fn load_dir(dir: &Path) -> Result<Self> {
        let trusted = pub_files(dir)?
            .iter()
            .map(|p| PublicKey::load(p))
            .collect::<Result<Vec<_>>>()?;
        let revoked_dir = dir.join("revoked");
        let revoked = if revoked_dir.is_dir() {
            pub_files(&revoked_dir)?
                .iter()
                .map(|p| PublicKey::load(p).map(|k| k.id))
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        if trusted.is_empty() {
            return Err(Error::NoTrustedKeys(dir.to_owned()));
        }
        Ok(Self { trusted, revoked })
    }

    /// The trusted keys (revoked ones included, as listed).
    pub fn keys(&self) -> &[PublicKey] {
        &self.trusted
    }

    /// Verifies `sig` over `data`; returns the key that signed it.
    pub fn verify(&self, data: &[u8], sig: &Signature) -> Result<&PublicKey> {
        if self.revoked.contains(&sig.key_id) {
            return Err(Error::RevokedKey {
                key_id: sig.key_id.to_string(),
            });
        }
        let pk = self
            .trusted
            .iter()
            .find(|k| k.id == sig.key_id)
            .ok_or_else(|| Error::UntrustedKey {
                key_id: sig.key_id.to_string(),
            })?;
        sig.verify_with(pk, data)?;
        Ok(pk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{generate, write_keypair, SecretKey};

    #[test]
    fn sign_verify_roundtrip_and_refusals() {
        let sk = generate();
        let other = generate();
        let set = TrustedKeys::new(vec![sk.public()], vec![]);
        let sig = Signature::sign(&sk, b"hello", "u", "name=x").unwrap();
        let parsed = Signature::parse(&sig.to_file_string()).unwrap();
        assert_eq!(parsed, sig);
        assert_eq!(set.verify(b"hello", &parsed).unwrap().id, sk.id);
        assert!(matches!(
            set.verify(b"hellO", &parsed),
            Err(Error::BadSignature(_))
        ));
        let mut tampered = parsed.clone();
        tampered.trusted_comment.push('!');
        assert!(matches!(
            set.verify(b"hello", &tampered),
            Err(Error::BadSignature(_))
        ));
        let foreign = Signature::sign(&other, b"hello", "u", "t").unwrap();
        assert!(matches!(
            set.verify(b"hello", &foreign),
            Err(Error::UntrustedKey { .. })
        ));
        let revoked = TrustedKeys::new(vec![sk.public()], vec![sk.id]);
        assert!(matches!(
            revoked.verify(b"hello", &parsed),
            Err(Error::RevokedKey { .. })
        ));
    }

    #[test]
    fn keypair_files_roundtrip_and_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("release");
        let sk = generate();
        let (pub_path, key_path) = write_keypair(&sk, &prefix).unwrap();
        assert_eq!(
            fs_err::metadata(&key_path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let loaded = SecretKey::load(&key_path).unwrap();
        assert_eq!(loaded.public(), PublicKey::load(&pub_path).unwrap());
        assert!(matches!(write_keypair(&sk, &prefix), Err(Error::Exists(_))));
        fs_err::set_permissions(&key_path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = SecretKey::load(&key_path).unwrap_err();
        assert!(matches!(err, Error::InsecureSecretKey { .. }));
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn key_dir_with_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let a = generate();
        let b = generate();
        fs_err::write(dir.path().join("a.pub"), a.public().to_file_string()).unwrap();
        fs_err::write(dir.path().join("b.pub"), b.public().to_file_string()).unwrap();
        fs_err::create_dir(dir.path().join("revoked")).unwrap();
        fs_err::write(
            dir.path().join("revoked/b.pub"),
            b.public().to_file_string(),
        )
        .unwrap();
        let set = TrustedKeys::load_dir(dir.path()).unwrap();
        let sig_a = Signature::sign(&a, b"m", "u", "t").unwrap();
        let sig_b = Signature::sign(&b, b"m", "u", "t").unwrap();
        set.verify(b"m", &sig_a).unwrap();
        assert!(matches!(
            set.verify(b"m", &sig_b),
            Err(Error::RevokedKey { .. })
        ));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            TrustedKeys::load_dir(empty.path()),
            Err(Error::NoTrustedKeys(_))
        ));
    }

    #[test]
    fn malformed_inputs_are_refused() {
        assert!(matches!(
            PublicKey::parse("nope"),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            Signature::parse("untrusted comment: x\nAAAA\n"),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            SecretKey::parse("untrusted comment: x\n!!!\n"),
            Err(Error::Malformed { .. })
        ));
    }
}
