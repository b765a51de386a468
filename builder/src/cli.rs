//! The command line of `comfy-build`: one options struct per verb, doc comments as help text.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Build, sign and check immutable ComfyUI release bundles.
#[derive(Debug, Parser)]
#[command(name = "comfy-build", version, about)]
pub struct Cli {
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make a signing key pair: PREFIX.pub (share it) and PREFIX.key (mode 0600, keep it secret).
    Keygen(KeygenArgs),
    /// Pack a directory tree into a signed bundle.
    Pack(PackArgs),
    /// Check a bundle's signature and every byte of its payload (exit 0 ok, 2 refused).
    Verify(VerifyArgs),
    /// Show what a bundle holds, without checking its signature.
    Inspect(InspectArgs),
    /// What changes from one release to another: ComfyUI, custom nodes, node classes, packages,
    /// launch flags, files and bytes.
    Diff(DiffArgs),
    /// Resolve a recipe's sources to commits and its packages to hashed pins: writes RECIPE.lock.
    Lock(LockArgs),
    /// Build a recipe into a signed bundle in --out DIR.
    Build(BuildArgs),
    /// Turn a ComfyUI-Manager snapshot into recipe sections (ComfyUI commit, custom nodes).
    ImportSnapshot(ImportSnapshotArgs),
    /// Check this build host for a recipe: tools, compilers, CUDA, disk, RAM, network.
    Doctor(DoctorArgs),
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    pub recipe: Option<PathBuf>,
    #[arg(long)]
    pub cache: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LockArgs {
    pub recipe: PathBuf,
    /// Cache for git mirrors and packages (default: ~/.cache/comfy-build).
    #[arg(long)]
    pub cache: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    pub recipe: PathBuf,
    #[command(flatten)]
    pub signing: SigningArgs,
    /// Directory the bundle is written into.
    #[arg(long)]
    pub out: PathBuf,
    /// Cache of sources, environments, wheels and stages (default: ~/.cache/comfy-build).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Refuse to build without a lock that matches the recipe.
    #[arg(long)]
    pub locked: bool,
    /// Print the plan (stages, digests, cached or not, commands) and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Skip the smoke start (the manifest records `smoke = "skipped"`).
    #[arg(long)]
    pub no_smoke: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ImportSnapshotArgs {
    /// A ComfyUI-Manager snapshot JSON file.
    pub snapshot: PathBuf,
    /// Git URL of ComfyUI for the `[comfyui]` section.
    #[arg(long, default_value = "https://github.com/comfyanonymous/ComfyUI")]
    pub comfyui_url: String,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Path prefix for the two key files.
    #[arg(long)]
    pub out: PathBuf,
}

/// Where the secret key comes from.
#[derive(Debug, Args)]
pub struct SigningArgs {
    /// Secret key file (minisign format, mode 0600). Without it, the key is read from COMFY_SIGNING_KEY.
    #[arg(long)]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PackArgs {
    /// The release tree to pack.
    pub dir: PathBuf,
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub version: String,
    /// Monotonic release number; hosts refuse to go below the highest they have seen.
    #[arg(long)]
    pub sequence: u64,
    /// Host target, e.g. linux-aarch64-cu130-sm_121.
    #[arg(long)]
    pub target: String,
    #[command(flatten)]
    pub signing: SigningArgs,
    /// Bundle file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Timestamp for every header (default: $SOURCE_DATE_EPOCH, else now).
    #[arg(long)]
    pub source_date_epoch: Option<u64>,
    /// zstd level.
    #[arg(long, default_value_t = 3)]
    pub level: i32,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Which keys to trust.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct TrustArgs {
    /// A trusted public key file.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// A directory of trusted `*.pub` files (keys in its `revoked/` are refused).
    #[arg(long)]
    pub keys: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    pub file: PathBuf,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The older release: a bundle, or a directory holding `.bundle/manifest.toml` (an unpacked
    /// release).
    pub old: PathBuf,
    /// The newer release, the same way.
    pub new: PathBuf,
    /// Print the whole diff as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    pub file: PathBuf,
    /// Print an object with id, name, version, sequence, target, files, bytes, provenance.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
