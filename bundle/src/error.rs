//! Every way a bundle can be refused, as variants an operator can act on. Each names the path or
//! frame involved; none carries payload bytes.

/// Why a bundle was refused or could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // Transparent: the key error says what happened, once (with `{0}` and a source as well, an
    // error chain printed it twice).
    #[error(transparent)]
    BadSignature(keys::Error),
    #[error(transparent)]
    UntrustedKey(keys::Error),
    #[error("the bundle was opened without checking its signature; open it with the trusted keys")]
    Unverified,
    #[error(
        "digest mismatch for {path}: the bundle's bytes differ from what its signed manifest lists"
    )]
    DigestMismatch { path: String },
    #[error("unsafe path {path:?}: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    #[error("bundle is truncated or incomplete: {0}")]
    Truncated(String),
    #[error("not a bundle: {0}")]
    NotABundle(String),
    #[error("entry {path:?} is not listed in the signed manifest")]
    UnexpectedEntry { path: String },
    #[error("entry {path:?} appears twice")]
    DuplicateEntry { path: String },
    #[error("entry {path:?} listed in the signed manifest is missing from the payload")]
    MissingEntry { path: String },
    #[error("entry {path:?} differs from the signed manifest: {detail}")]
    EntryMismatch { path: String, detail: String },
    #[error("entry {path:?} is a {kind}, which bundles never contain")]
    ForbiddenEntry { path: String, kind: &'static str },
    #[error("bundle exceeds its limits: {0}")]
    LimitExceeded(String),
    #[error("invalid manifest: {0}")]
    BadManifest(String),
    #[error("corrupt frame {frame}: {detail}")]
    CorruptFrame { frame: usize, detail: String },
    #[error("cannot pack {path}: {reason}")]
    Unpackable { path: String, reason: String },
    #[error(transparent)]
    Key(keys::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Errors that mean the input was refused (exit code 2), as opposed to a local I/O failure.
    pub fn is_refusal(&self) -> bool {
        !matches!(
            self,
            Error::Io(_) | Error::Key(_) | Error::Unpackable { .. }
        )
    }

    pub(crate) fn from_keys(e: keys::Error) -> Self {
        match e {
            keys::Error::UntrustedKey { .. } | keys::Error::RevokedKey { .. } => {
                Error::UntrustedKey(e)
            }
            keys::Error::BadSignature(_) | keys::Error::Malformed { .. } => Error::BadSignature(e),
            other => Error::Key(other),
        }
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// What `{:#}` of an error chain prints (anyhow's format): each cause once.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut out = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            out.push_str(": ");
            out.push_str(&c.to_string());
            cur = c.source();
        }
        out
    }

    #[test]
    fn key_errors_are_printed_once() {
        let cases = [
            Error::from_keys(keys::Error::UntrustedKey {
                key_id: "ABCD".into(),
            }),
            Error::from_keys(keys::Error::RevokedKey {
                key_id: "ABCD".into(),
            }),
            Error::from_keys(keys::Error::BadSignature("forged")),
        ];
        for e in &cases {
            let text = chain(e);
            let first = e.to_string();
            assert_eq!(text.matches(first.as_str()).count(), 1, "{text}");
            assert!(!text.contains("bad signature: bad signature"), "{text}");
        }
        assert!(matches!(cases[0], Error::UntrustedKey(_)));
        assert!(matches!(cases[2], Error::BadSignature(_)));
    }
}
