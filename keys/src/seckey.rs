//! minisign secret keys, unencrypted (`minisign -G -W` or `comfy-build keygen`): base64 of
//! `Ed` || kdf `\0\0` || `B2` || salt[32] || opslimit[8] || memlimit[8] || key id[8] || sk[64] || chk[32],
//! where chk = BLAKE2b-256(`Ed` || key id || sk). Files must not be readable by group or others.

use crate::pubkey::{KeyId, PublicKey};
use crate::{b64_decode, b64_encode, comment_and_payload, Error, Result};
use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};
use ed25519_dalek::SigningKey;
use fs_err::os::unix::fs::OpenOptionsExt as _;
use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// Environment variable CI uses to hand a secret key to the builder without a file.
pub const SECRET_KEY_ENV: &str = "COMFY_SIGNING_KEY";

const SK_LEN: usize = 2 + 2 + 2 + 32 + 8 + 8 + 8 + 64 + 32;

/// A release signing key. `Debug` shows only the key id.
#[derive(Clone)]
pub struct SecretKey {
    pub id: KeyId,
    pub(crate) signing: SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn checksum(id: &[u8; 8], sk: &[u8; 64]) -> [u8; 32] {
    let mut h = Blake2b::<U32>::new();
    h.update(b"Ed");
    h.update(id);
    h.update(sk);
    h.finalize().into()
}

impl SecretKey {
    /// Parses the text of a secret key file (or just its base64 line).
    pub fn parse(text: &str) -> Result<Self> {
        const WHAT: &str = "secret key";
        let payload = if text.trim_start().starts_with("untrusted comment:") {
            comment_and_payload(WHAT, text)?.1
        } else {
            text.trim()
        };
        let raw = b64_decode(WHAT, payload)?;
        if raw.len() != SK_LEN {
            return Err(Error::Malformed {
                what: WHAT,
                detail: format!("expected {SK_LEN} bytes, found {}", raw.len()),
            });
        }
        if &raw[0..2] != b"Ed" {
            return Err(Error::Malformed {
                what: WHAT,
                detail: "not an Ed25519 key".into(),
            });
        }
        match &raw[2..4] {
            b"\0\0" => {}
            b"Sc" => return Err(Error::EncryptedSecretKey),
            _ => {
                return Err(Error::Malformed {
                    what: WHAT,
                    detail: "unknown key derivation".into(),
                })
            }
        }
        if &raw[4..6] != b"B2" {
            return Err(Error::Malformed {
                what: WHAT,
                detail: "unknown checksum algorithm".into(),
            });
        }
        let body = &raw[54..];
        let mut id = [0u8; 8];
        id.copy_from_slice(&body[..8]);
        let mut sk = [0u8; 64];
        sk.copy_from_slice(&body[8..72]);
        // `minisign -G -W` leaves the checksum zeroed on unencrypted keys; the seed/public-key check
        // below still catches a corrupt file.
        let zeroed = body[72..104].iter().all(|b| *b == 0);
        if !zeroed && checksum(&id, &sk)[..] != body[72..104] {
            return Err(Error::Malformed {
                what: WHAT,
                detail: "checksum mismatch (corrupt key file)".into(),
            });
        }
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&sk[..32]);
        let signing = SigningKey::from_bytes(&seed);
        if signing.verifying_key().as_bytes()[..] != sk[32..] {
            return Err(Error::Malformed {
                what: WHAT,
                detail: "public half does not match the seed".into(),
            });
        }
        Ok(Self {
            id: KeyId(id),
            signing,
        })
    }

    /// Loads a secret key file, refusing one that group or others can read.
    pub fn load(path: &Path) -> Result<Self> {
        let meta = fs_err::metadata(path)?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(Error::InsecureSecretKey {
                path: path.display().to_string(),
                mode,
            });
        }
        Self::parse(&fs_err::read_to_string(path)?)
    }

    /// Loads the key from [`SECRET_KEY_ENV`] if set.
    pub fn from_env() -> Result<Option<Self>> {
        match std::env::var(SECRET_KEY_ENV) {
            Ok(v) => Self::parse(&v).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            id: self.id,
            key: self.signing.verifying_key(),
        }
    }

    fn to_file_string(&self) -> String {
        let mut sk = [0u8; 64];
        sk[..32].copy_from_slice(self.signing.as_bytes());
        sk[32..].copy_from_slice(self.signing.verifying_key().as_bytes());
        let mut raw = Vec::with_capacity(SK_LEN);
        raw.extend_from_slice(b"Ed\0\0B2");
        raw.extend_from_slice(&[0u8; 48]); // salt, opslimit, memlimit: unused without a kdf
        raw.extend_from_slice(&self.id.0);
        raw.extend_from_slice(&sk);
        raw.extend_from_slice(&checksum(&self.id.0, &sk));
        format!(
            "untrusted comment: minisign secret key\n{}\n",
            b64_encode(&raw)
        )
    }
}

/// Makes a fresh key pair from the operating system's random source.
pub fn generate() -> SecretKey {
    use rand_core::RngCore as _;
    let mut rng = rand_core::OsRng;
    let mut id = [0u8; 8];
    rng.fill_bytes(&mut id);
    SecretKey {
        id: KeyId(id),
        signing: SigningKey::generate(&mut rng),
    }
}

/// Writes `PREFIX.pub` and `PREFIX.key` (mode 0600); never overwrites either.
pub fn write_keypair(sk: &SecretKey, prefix: &Path) -> Result<(PathBuf, PathBuf)> {
    let with_ext = |ext: &str| {
        let mut s = prefix.as_os_str().to_owned();
        s.push(ext);
        PathBuf::from(s)
    };
    let (pub_path, key_path) = (with_ext(".pub"), with_ext(".key"));
    for p in [&pub_path, &key_path] {
        if p.exists() {
            return Err(Error::Exists(p.clone()));
        }
    }
    let create = |path: &Path, mode: u32, text: &str| -> Result<()> {
        let mut f = fs_err::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Error::Exists(path.into())
                } else {
                    e.into()
                }
            })?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        Ok(())
    };
    create(&key_path, 0o600, &sk.to_file_string())?;
    create(&pub_path, 0o644, &sk.public().to_file_string())?;
    Ok((pub_path, key_path))
}
