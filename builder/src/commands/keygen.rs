//! `comfy-build keygen`: a fresh key pair in minisign's formats; never overwrites a file.

use crate::cli::KeygenArgs;
use anyhow::{Context as _, Result};

pub fn run(a: KeygenArgs) -> Result<()> {
    let sk = keys::generate();
    let (pub_path, key_path) = keys::write_keypair(&sk, &a.out)
        .with_context(|| format!("writing key pair {}.{{pub,key}}", a.out.display()))?;
    println!("key id {}", sk.id);
    println!(
        "public key:  {} (install it in /etc/comfyui/keys/ on hosts)",
        pub_path.display()
    );
    println!(
        "secret key:  {} (mode 0600; keep it off hosts)",
        key_path.display()
    );
    Ok(())
}
