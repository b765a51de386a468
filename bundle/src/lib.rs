//! The release bundle format shared by builder and activator (see `FORMAT.md`): a canonical signed
//! manifest, a deterministic tar payload cut into independent zstd frames, a frame index, and a reader
//! that trusts nothing before the signature and nothing the signed manifest does not list.
//! No processes, no network, no systemd here.

mod digesting;
mod error;
mod extract;
pub mod index;
mod layout;
pub mod manifest;
pub mod paths;
mod reader;
pub mod reuse;
mod stream;
pub mod tarfmt;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod writer;
mod writers;

pub use error::{Error, Result};
pub use extract::{
    content_mtime, count, make_writable_and_remove, unchanged, ExtractOptions, Extracted,
    ObjectSource,
};
pub use layout::{trusted_comment, MANIFEST_PATH, MAX_FRAME_RAW, SIGNATURE_PATH};
pub use manifest::{
    bundle_id, rfc3339, Check, Entry, Extension, GitSource, Kind, Launch, Limits, Manifest,
    ModelFile, Provenance, StatePath, Workflow, FORMAT_VERSION, LAUNCH_ENTRY, MAX_ENTRIES,
    MAX_MANIFEST_BYTES, STATE_DIR,
};
pub use reader::Bundle;
pub use stream::{FileOut, NullSink, Sink};
pub use writer::{pack, scan, PackOptions, Packed, ScanKind, Scanned};
