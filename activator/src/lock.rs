//! The activation lock: `flock` on `state/lock`. A second comfyctl waits up to the configured time,
//! then fails with a message naming the holder.

use anyhow::{bail, Context as _, Result};
use rustix::fs::{flock, FlockOperation};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

/// Held until dropped (the kernel releases it if the process dies).
pub struct Lock {
    _file: std::fs::File,
}

pub fn acquire(state_dir: &Path, wait: Duration) -> Result<Lock> {
    let path = state_dir.join("lock");
    let mut file = fs_err::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?
        .into_parts()
        .0;
    let start = Instant::now();
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => break,
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                if start.elapsed() >= wait {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    bail!(
                        "another comfyctl is activating or rolling back (pid {}); waited {}s for {}. Try again when it is done",
                        holder.trim(),
                        wait.as_secs(),
                        path.display()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(Lock { _file: file })
}
