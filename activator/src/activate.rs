//! `comfyctl activate`: lock, fetch, verify the signature before anything else, check target and
//! sequence, unpack through the store into staging (every byte verified, synced), rename into
//! `releases/<id>`, pre-flight, switch. Each step is crash-safe; failpoints sit between them.

use crate::failpoint;
use crate::gc::{gc, GcReport};
use crate::host::{refuse, Host};
use crate::release;
use crate::source::{self, Fetched};
use crate::state::{now, ReleaseRecord, State, Status};
use crate::store::Store;
use crate::{atomic, preflight, switch};
use anyhow::{Context as _, Result};
use bundle::ObjectSource as _;
use std::os::unix::fs::PermissionsExt as _;
use std::time::Instant;

#[derive(Debug, Clone, Default)]
pub struct ActivateOptions {
    pub allow_downgrade: bool,
    pub jobs: usize,
    /// Restart the systemd unit, health-check, and roll back by itself if unhealthy.
    pub service: bool,
    /// What the stop waits for first.
    pub drain: crate::drain::Options,
}

impl Default for crate::drain::Options {
    fn default() -> Self {
        crate::drain::Options {
            policy: crate::drain::Policy::Off,
            timeout: std::time::Duration::ZERO,
        }
    }
}

/// What an activation did, printed for people and as JSON for Ansible.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ActivateReport {
    /// False when the release was already current (nothing changed).
    pub changed: bool,
    pub id: String,
    pub name: String,
    pub version: String,
    pub sequence: u64,
    pub previous: Option<String>,
    /// False when the release was already installed and intact.
    pub unpacked: bool,
    pub files_written: u64,
    pub files_reused: u64,
    pub bytes_written: u64,
    pub bytes_reused: u64,
    pub frames_read: usize,
    pub frames_total: usize,
    pub preflight_checks: usize,
    pub fetch: Option<Fetched>,
    pub seconds: f64,
    pub gc: Option<GcReport>,
    pub health: Option<crate::health::Health>,
    /// The running app's jobs waited for before the unit stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain: Option<crate::drain::Drained>,
    /// Declared model files this host lacks or holds with other content (a warning by policy).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub model_warnings: Vec<String>,
    /// Store objects found written since they were stored: moved to `store/.quarantine/`, their
    /// files written from this bundle instead.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quarantined_objects: Vec<String>,
}

/// A URL on a host that already has releases: first try fetching only the frames it lacks.
fn fetch(host: &Host, src: &str, trusted: &keys::TrustedKeys) -> Result<Fetched> {
    let stall = std::time::Duration::from_secs(host.cfg.stall_secs.max(1));
    if source::is_url(src) && host.current().is_some() {
        fs_err::create_dir_all(host.layout.downloads())?;
        let dest = host
            .layout
            .downloads()
            .join(format!("delta-{}.bundle", std::process::id()));
        let store = Store::new(host.layout.store());
        match crate::delta::fetch(
            src,
            &dest,
            &store,
            trusted,
            host.cfg.max_download_bytes,
            stall,
        ) {
            Ok(f) => return Ok(f),
            Err(e) if support::is_refusal(&e, &crate::host::is_refusal) => {
                let _ = fs_err::remove_file(&dest);
                return Err(e);
            }
            Err(e) => {
                let _ = fs_err::remove_file(&dest);
                tracing::warn!("delta download not possible ({e:#}); fetching the whole bundle");
            }
        }
    }
    source::fetch(
        src,
        &host.layout.downloads(),
        host.cfg.max_download_bytes,
        stall,
    )
}

/// Makes sure the journal matches the real `current` after a kill.
pub(crate) fn load_state(host: &Host) -> Result<State> {
    let (state, changed) = reconciled_state(host)?;
    if changed {
        state.save(&host.layout.state())?;
    }
    Ok(state)
}

/// The journal as [`load_state`] makes it, without writing it back (dry runs and diffs).
pub(crate) fn load_state_read_only(host: &Host) -> Result<State> {
    Ok(reconciled_state(host)?.0)
}

fn reconciled_state(host: &Host) -> Result<(State, bool)> {
    let mut state = State::load(&host.layout.state())?;
    let changed = state.reconcile(host.current().as_deref());
    Ok((state, changed))
}

/// Refuses a release built for another target than this host's.
pub(crate) fn check_target(host: &Host, m: &bundle::Manifest, src: &str) -> Result<()> {
    if m.target != host.cfg.target {
        return refuse(format!(
            "{src} is built for {}, this host runs {}",
            m.target, host.cfg.target
        ));
    }
    Ok(())
}

/// Refuses a release below the highest sequence this host has seen, unless told to downgrade.
pub(crate) fn check_sequence(
    m: &bundle::Manifest,
    state: &State,
    allow_downgrade: bool,
) -> Result<()> {
    if m.sequence < state.highest_sequence && !allow_downgrade {
        return refuse(format!(
            "{} {} has sequence {}, below the highest this host has seen ({}); use --allow-downgrade to activate an older release",
            m.name, m.version, m.sequence, state.highest_sequence
        ));
    }
    Ok(())
}

/// What the checks an activation makes before it writes anything found (the activation and its
/// dry run both get them from [`admit`], so they cannot disagree).
pub(crate) struct Admission {
    /// The release is current already and intact: nothing to do.
    pub no_op: bool,
    /// Installed and intact: no unpack.
    pub intact: bool,
    pub is_current: bool,
    /// Declared model files this host lacks or holds with other content (policy `warn`).
    pub model_warnings: Vec<String>,
}

/// The checks before anything is written: the target, the sequence (unless the release is
/// current and intact already: re-activating what a rollback returned to is fine), and the
/// declared model files on this host's model store (refused where the host's policy says `fail`).
pub(crate) fn admit(
    host: &Host,
    m: &bundle::Manifest,
    id: &str,
    src: &str,
    state: &State,
    allow_downgrade: bool,
    dry_run: bool,
) -> Result<Admission> {
    check_target(host, m, src)?;
    let intact = is_intact(&host.layout.release(id));
    let is_current = host.current().as_deref() == Some(id);
    let no_op = is_current && intact;
    if !no_op {
        check_sequence(m, state, allow_downgrade)?;
    }
    let model_warnings = crate::models::problems_of(host, m, !dry_run)?;
    if !model_warnings.is_empty()
        && host.cfg.health.missing_models == crate::config::MissingModels::Fail
    {
        return refuse(format!(
            "{} {} declares model files this host lacks: {}; run `comfyctl models {src} --fetch` first",
            m.name,
            m.version,
            model_warnings.join("; ")
        ));
    }
    Ok(Admission {
        no_op,
        intact,
        is_current,
        model_warnings,
    })
}

/// How an activation's files split between the store (reused) and the bundle (written), each
/// store object counted once.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Share {
    pub files_to_write: u64,
    pub bytes_to_write: u64,
    pub files_reused: u64,
    pub bytes_reused: u64,
}

pub(crate) fn store_share(m: &bundle::Manifest, store: &Store) -> Share {
    let mut sh = Share::default();
    let mut seen = std::collections::HashSet::new();
    for e in &m.files {
        if let bundle::Kind::File {
            executable,
            size,
            sha256,
        } = &e.kind
        {
            if store.contains(sha256, *executable, *size) {
                sh.files_reused += 1;
                sh.bytes_reused += size;
            } else if seen.insert((*sha256, *executable)) {
                sh.files_to_write += 1;
                sh.bytes_to_write += size;
            }
        }
    }
    sh
}

/// Installed, and no file written since it was: usable as it is.
pub(crate) fn is_intact(dir: &std::path::Path) -> bool {
    release::is_intact(dir) && release::changed_files(dir).is_ok_and(|c| c.is_empty())
}

pub fn activate(host: &Host, src: &str, opts: &ActivateOptions) -> Result<ActivateReport> {
    let t0 = Instant::now();
    let trusted = host.trusted_keys()?;
    // The download happens before the activation lock: a slow or stalled mirror never keeps an
    // operator's `rollback` (or anything else that takes the lock) waiting.
    host.layout.ensure()?;
    let fetched = fetch(host, src, &trusted)?;
    let _lock = host.lock()?;
    failpoint::hit("activate::locked")?;
    let mut state = load_state(host)?;
    host.clean_staging()?;
    // A downloaded bundle is done with once this activation ends, whatever the outcome: its
    // files are in the store, or it was refused. (A cut download stays as `.part` to resume.)
    // Only this download's file (same inode): another activation of the same URL may have
    // replaced it meanwhile.
    struct Downloaded(Option<(std::path::PathBuf, u64)>);
    impl Drop for Downloaded {
        fn drop(&mut self) {
            use std::os::unix::fs::MetadataExt as _;
            if let Some((p, ino)) = &self.0 {
                if fs_err::metadata(p).is_ok_and(|m| m.ino() == *ino) {
                    let _ = fs_err::remove_file(p);
                }
            }
        }
    }
    let _downloaded = Downloaded(
        fetched
            .path
            .starts_with(host.layout.downloads())
            .then(|| {
                use std::os::unix::fs::MetadataExt as _;
                fs_err::metadata(&fetched.path)
                    .ok()
                    .map(|m| (fetched.path.clone(), m.ino()))
            })
            .flatten(),
    );
    let b =
        bundle::Bundle::open(&fetched.path, &trusted).with_context(|| format!("refusing {src}"))?;
    let m = &b.manifest;
    let admission = admit(host, m, &b.id, src, &state, opts.allow_downgrade, false)?;
    let mut report = ActivateReport {
        id: b.id.clone(),
        name: m.name.clone(),
        version: m.version.clone(),
        sequence: m.sequence,
        previous: host.current(),
        frames_total: b.frames.len() - 1,
        fetch: source::is_url(src).then(|| fetched.clone()),
        ..Default::default()
    };
    let dir = host.layout.release(&b.id);
    // Installed, and no file written since: reused as it is. A release with changed files is
    // unpacked again (its changed objects were quarantined, so the bundle's bytes are written).
    let (is_current, intact) = (admission.is_current, admission.intact);
    if admission.no_op {
        switch::ensure_seed_links(host)?;
        report.seconds = t0.elapsed().as_secs_f64();
        return Ok(report);
    }
    for p in &admission.model_warnings {
        tracing::warn!("declared model file {p}");
    }
    report.model_warnings = admission.model_warnings;
    report.changed = true;
    if !intact {
        if dir.exists() {
            if is_current {
                return refuse(format!(
                    "the current release {} is damaged; run `comfyctl verify`",
                    b.id
                ));
            }
            host.discard(&b.id)?;
        }
        unpack(host, &b, opts, &mut report)?;
    }
    let record = state
        .releases
        .entry(b.id.clone())
        .or_insert_with(|| ReleaseRecord {
            name: m.name.clone(),
            version: m.version.clone(),
            sequence: m.sequence,
            target: m.target.clone(),
            installed_at: now(),
            activated_at: None,
            status: Status::Installed,
            reason: None,
        });
    record.status = Status::Installed;
    record.reason = None;
    state.save(&host.layout.state())?;

    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "release in place");
    match preflight::run(&dir, m, crate::accounts::checker(host)?) {
        Ok(n) => report.preflight_checks = n,
        Err(e) => {
            state.set_status(&b.id, Status::Failed, Some(format!("{e:#}")));
            state.save(&host.layout.state())?;
            return Err(e.context(format!("{} {} did not become current", m.name, m.version)));
        }
    }
    let previous = host.current();
    // Everything the new release needs that can be made while the old one serves: a failure
    // here changes nothing the running release uses.
    let prepared = if opts.service {
        Some(crate::start::prepare(host, &b.id, previous.as_deref())?)
    } else {
        None
    };
    failpoint::hit("activate::before-switch")?;
    match &prepared {
        None => {
            switch::switch(host, &mut state, &b.id, "activate")?;
        }
        Some(p) => {
            let s = crate::start::switch_and_start(
                host,
                &mut state,
                p,
                previous.as_deref(),
                "activate",
                &opts.drain,
            )?;
            report.drain = Some(s.drained.clone());
            if !s.health.healthy {
                let reason = s.health.reason.clone().unwrap_or_default();
                let journal = crate::service::journal_note(host);
                state.set_status(&b.id, Status::Failed, Some(reason.clone()));
                state.save(&host.layout.state())?;
                anyhow::bail!(
                    "{} {} was unhealthy: {reason}; {}\n{journal}",
                    m.name,
                    m.version,
                    crate::start::describe_return(&s.returned)
                );
            }
            report.health = Some(s.health);
        }
    }
    state.set_status(&b.id, Status::Good, None);
    state.save(&host.layout.state())?;
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "switched");
    report.gc = Some(gc(host, &mut state, false)?);
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "garbage collected");
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// Refuses, before anything is written, a release whose new bytes (files the store lacks) do
/// not fit in the free space of the install directory's filesystem with a margin: a bundle that
/// declares more than the disk holds stops here, not half-way with a full disk.
pub(crate) fn check_space(host: &Host, b: &bundle::Bundle, store: &Store) -> Result<()> {
    let need = store_share(&b.manifest, store).bytes_to_write;
    let dir = host.layout.releases();
    fs_err::create_dir_all(&dir)?;
    let st = rustix::fs::statvfs(&dir).with_context(|| format!("statvfs {}", dir.display()))?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    // Directories, metadata and the filesystem's own rounding: 2 % on top, plus 64 MiB (or a
    // twentieth of a smaller filesystem).
    let size = st.f_blocks.saturating_mul(st.f_frsize);
    let margin = (64u64 << 20).min(size / 20).saturating_add(need / 50);
    if need.saturating_add(margin) > free {
        return refuse(format!(
            "{} needs {} bytes of new files (and a {} byte margin) but {} has {} bytes free; \
             free space there (`comfyctl gc` removes old releases) and run the same command again",
            support::short_id(&b.id),
            need,
            margin,
            dir.display(),
            free
        ));
    }
    Ok(())
}

fn unpack(
    host: &Host,
    b: &bundle::Bundle,
    opts: &ActivateOptions,
    report: &mut ActivateReport,
) -> Result<()> {
    let store = Store::new(host.layout.store());
    let staging = host.layout.releases().join(format!(
        ".staging-{}-{}",
        support::short_id(&b.id),
        std::process::id()
    ));
    check_space(host, b, &store)?;
    let pb = support::bytes_bar(b.payload_bytes(), "unpacking");
    let xopts = bundle::ExtractOptions {
        jobs: opts.jobs.max(1),
        read_only: true,
        sync: true,
    };
    failpoint::hit("activate::before-unpack")?;
    let x = b
        .extract_with(&staging, &xopts, Some(&store), &|n| pb.set_position(n))
        .with_context(|| format!("unpacking {} into {}", b.id, staging.display()))?;
    tracing::debug!(files = x.files, reused = x.reused, "unpacked");
    pb.finish_and_clear();
    report.unpacked = true;
    report.files_written = x.files - x.reused;
    report.files_reused = x.reused;
    report.bytes_written = x.bytes;
    report.bytes_reused = x.reused_bytes;
    report.frames_read = x.frames_read;
    report.quarantined_objects = store.quarantined();
    failpoint::hit("activate::unpacked")?;
    let t = Instant::now();
    let finish = || -> Result<()> {
        let meta = staging.join(".bundle");
        fs_err::create_dir(&meta)?;
        atomic::write(&staging.join(release::MANIFEST), &b.manifest_bytes)?;
        atomic::write(
            &staging.join(release::SIGNATURE),
            b.signature.to_file_string().as_bytes(),
        )?;
        for f in [release::MANIFEST, release::SIGNATURE] {
            fs_err::set_permissions(staging.join(f), std::fs::Permissions::from_mode(0o444))?;
        }
        fs_err::set_permissions(&meta, std::fs::Permissions::from_mode(0o555))?;
        if !b.manifest.state.is_empty() {
            // The release's state links end here: in the host's data, not in the release.
            std::os::unix::fs::symlink(release::STATE_LINK, staging.join(bundle::STATE_DIR))?;
        }
        fs_err::set_permissions(&staging, std::fs::Permissions::from_mode(0o555))?;
        tracing::debug!(ms = t.elapsed().as_millis() as u64, "metadata written");
        store.adopt(&staging, &b.manifest, &x.written)?;
        tracing::debug!(
            ms = t.elapsed().as_millis() as u64,
            "new objects adopted into the store"
        );
        failpoint::hit("activate::adopted")?;
        let fd = rustix::fs::open(
            &staging,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )?;
        rustix::fs::syncfs(&fd)?;
        fs_err::rename(&staging, host.layout.release(&b.id))?;
        atomic::fsync_dir(&host.layout.releases())?;
        Ok(())
    };
    if let Err(e) = finish() {
        let _ = bundle::make_writable_and_remove(&staging);
        return Err(e);
    }
    failpoint::hit("activate::renamed")?;
    Ok(())
}
