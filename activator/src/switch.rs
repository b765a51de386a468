//! The one atomic switch: journal the intent, swap `current` (temp link + rename + fsync), journal
//! the result. A kill anywhere leaves `current` on a complete release; `State::reconcile` settles
//! the journal on the next run.

use crate::atomic;
use crate::failpoint;
use crate::host::Host;
use crate::state::{Pending, State};
use anyhow::Result;
use std::path::PathBuf;
use std::time::Instant;

/// Points `current` at `id`; returns how long the flip itself took.
pub fn switch(
    host: &Host,
    state: &mut State,
    id: &str,
    action: &str,
) -> Result<std::time::Duration> {
    let from = host.current();
    state.pending = Some(Pending {
        id: id.to_owned(),
        from: from.clone(),
        action: action.to_owned(),
    });
    state.save(&host.layout.state())?;
    failpoint::hit("switch::before-flip")?;
    let t = Instant::now();
    atomic::replace_symlink(&PathBuf::from("releases").join(id), &host.layout.current())?;
    let took = t.elapsed();
    failpoint::hit("switch::flipped")?;
    state.pending = None;
    state.finish_switch(id, from, action);
    state.save(&host.layout.state())?;
    ensure_seed_links(host)?;
    Ok(took)
}

/// The seed's paths (`/opt/comfyui/venv`, `/opt/comfyui/ComfyUI`) resolve through `current`. A real
/// directory there (an in-place install) is left alone, with a warning.
pub fn ensure_seed_links(host: &Host) -> Result<()> {
    for name in ["venv", "ComfyUI"] {
        let link = host.layout.install.join(name);
        let target = PathBuf::from("current").join(name);
        match fs_err::symlink_metadata(&link) {
            Ok(m) if m.file_type().is_symlink() => {
                if fs_err::read_link(&link)? != target {
                    atomic::replace_symlink(&target, &link)?;
                }
            }
            Ok(_) => tracing::warn!(
                "{} is a directory from an in-place install; it is left as is and does not follow `current`",
                link.display()
            ),
            Err(_) => atomic::replace_symlink(&target, &link)?,
        }
    }
    Ok(())
}
