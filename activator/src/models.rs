//! Model files a release declares (its manifest's `models`: what its nodes or their install
//! scripts need, by path, size and SHA-256). They live on the host's model store (`data/models`,
//! usually the shared NFS tree that every Spark of a fleet mounts), never in the bundle.
//! `comfyctl models` says which are present, missing or different; `--fetch` downloads the
//! missing ones (resumable, with a stall timeout, into root's own `state/downloads`), checks
//! size and SHA-256, and only then puts each in place without ever replacing a file of the same
//! name. The model store belongs to the access group, so it is walked without links
//! ([`crate::beneath`]). Hashing a large model is cached by the file's identity (device, inode,
//! size, modification and change times), so health stays fast.

use crate::beneath::{Dir, Kind};
use crate::host::Host;
use anyhow::{Context as _, Result};
use bundle::ModelFile;
use std::collections::BTreeMap;

/// Where one declared model stands on this host.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelStatus {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// `present`, `missing`, `different` (a file of that name with other content), `fetched`.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `comfyctl models`' report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelsReport {
    pub release: String,
    pub id: String,
    pub models: Vec<ModelStatus>,
}

impl ModelsReport {
    /// The models that are not there as declared (`path: why`).
    pub fn problems(&self) -> Vec<String> {
        problems(&self.models)
    }
}

fn problems(models: &[ModelStatus]) -> Vec<String> {
    models
        .iter()
        .filter(|m| m.state == "missing" || m.state == "different")
        .map(|m| {
            format!(
                "models/{}: {}",
                m.path,
                m.detail.as_deref().unwrap_or(&m.state)
            )
        })
        .collect()
}

/// The model store: `data/models`, or the NFS target the host config maps it to.
fn store(host: &Host) -> Result<Option<Dir>> {
    let Some(data) = Dir::open_root_owned(&host.layout.install)?.open_dir("data")? else {
        return Ok(None);
    };
    match data.kind(comfyui::MODELS_DIR)? {
        Some(Kind::Dir) => data.open_dir(comfyui::MODELS_DIR),
        Some(Kind::Symlink) if !host.cfg.data.models.is_empty() => Ok(Some(Dir::open_configured(
            std::path::Path::new(&host.cfg.data.models),
        )?)),
        _ => Ok(None),
    }
}

/// The identity a cached hash is valid for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct HashCache {
    files: BTreeMap<String, (Identity, String)>,
}

fn cache_path(host: &Host) -> std::path::PathBuf {
    host.layout.state().join("model-hashes.json")
}

fn identity(f: &std::fs::File) -> Result<Identity> {
    let st = rustix::fs::fstat(f)?;
    Ok(Identity {
        dev: st.st_dev,
        ino: st.st_ino,
        size: u64::try_from(st.st_size).unwrap_or(0),
        mtime: (st.st_mtime, st.st_mtime_nsec as i64),
        ctime: (st.st_ctime, st.st_ctime_nsec as i64),
    })
}

fn sha256_of(f: &std::fs::File) -> Result<String> {
    Ok(support::sha256_hex(f)?)
}

/// Where each declared model stands, hashing only files whose identity changed since last time.
/// `keep`: write what was hashed to the cache (a dry run writes nothing).
fn check_all(host: &Host, models: &[ModelFile], keep: bool) -> Result<Vec<ModelStatus>> {
    let root = store(host)?;
    let mut cache: HashCache = fs_err::read(cache_path(host))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut dirty = false;
    for m in models {
        let status = |state: &str, detail: Option<String>| ModelStatus {
            path: m.path.clone(),
            size: m.size,
            sha256: m.sha256.clone(),
            state: state.to_owned(),
            detail,
        };
        let Some(root) = &root else {
            out.push(status(
                "missing",
                Some("no model store (data/models)".into()),
            ));
            continue;
        };
        let (dir, leaf) = match m.path.rsplit_once('/') {
            Some((d, l)) => (root.open_dir(d), l),
            None => (root.try_clone().map(Some), m.path.as_str()),
        };
        let opened = dir.and_then(|d| match d {
            None => Ok(None),
            Some(d) => d.open_file(leaf, u64::MAX, None),
        });
        let (f, size) = match opened {
            Ok(Some(x)) => x,
            Ok(None) => {
                out.push(status("missing", Some("missing".into())));
                continue;
            }
            Err(e) => {
                out.push(status("different", Some(format!("{e:#}"))));
                continue;
            }
        };
        if size != m.size {
            out.push(status(
                "different",
                Some(format!("{size} bytes, the release declares {}", m.size)),
            ));
            continue;
        }
        let id = identity(&f)?;
        let sha = match cache.files.get(&m.path) {
            Some((known, sha)) if *known == id => sha.clone(),
            _ => {
                let sha = sha256_of(&f)?;
                cache.files.insert(m.path.clone(), (id, sha.clone()));
                dirty = true;
                sha
            }
        };
        if sha == m.sha256 {
            out.push(status("present", None));
        } else {
            out.push(status(
                "different",
                Some(format!("sha256 {sha}, the release declares {}", m.sha256)),
            ));
        }
    }
    if dirty && keep {
        // A cache: failing to keep it costs a re-hash next time, nothing else.
        if let Ok(bytes) = serde_json::to_vec(&cache) {
            let _ = crate::atomic::write(&cache_path(host), &bytes);
        }
    }
    Ok(out)
}

/// The declared models of a manifest that are missing or different here (for health and
/// pre-flight), `path: why` each.
pub fn problems_of(host: &Host, m: &bundle::Manifest, keep: bool) -> Result<Vec<String>> {
    if m.models.is_empty() {
        return Ok(Vec::new());
    }
    Ok(problems(&check_all(host, &m.models, keep)?))
}

/// `comfyctl models [SOURCE] [--fetch]`: SOURCE is an installed id, a bundle file or a URL
/// (default: current).
pub fn models(host: &Host, src: Option<&str>, fetch: bool) -> Result<ModelsReport> {
    let (id, m) = match src {
        Some(s) => {
            let o = crate::diff::open(host, s, &crate::store::Store::new(host.layout.store()))?;
            (o.id, o.manifest)
        }
        None => match host.current() {
            Some(id) => {
                let m = crate::release::manifest(&host.layout.release(&id))?;
                (id, m)
            }
            None => return crate::host::refuse("no current release; name one (id, bundle or URL)"),
        },
    };
    let mut statuses = check_all(host, &m.models, true)?;
    if fetch {
        for (st, decl) in statuses.iter_mut().zip(&m.models) {
            if st.state != "missing" {
                continue;
            }
            match fetch_one(host, decl) {
                Ok(()) => {
                    st.state = "fetched".into();
                    st.detail = None;
                }
                Err(e) => st.detail = Some(format!("not fetched: {e:#}")),
            }
        }
    }
    Ok(ModelsReport {
        release: format!("{} {}", m.name, m.version),
        id,
        models: statuses,
    })
}

/// Downloads one model into root's `state/downloads` (resumable), checks it, then puts it in
/// the model store under its name without replacing anything there.
fn fetch_one(host: &Host, m: &ModelFile) -> Result<()> {
    let url = match &host.cfg.models.base_url {
        b if !b.is_empty() => format!("{}/{}", b.trim_end_matches('/'), m.path),
        _ if !m.url.is_empty() => m.url.clone(),
        _ => {
            anyhow::bail!("the release gives no URL for it; set [models] base_url in comfyctl.toml")
        }
    };
    // Only a download: a local path here would be read (and removed) as if comfyctl had fetched it.
    if !crate::source::is_url(&url) {
        return crate::host::refuse(format!(
            "{url} is not an http(s) URL; [models] base_url and a model's url must be http(s)"
        ));
    }
    let stall = std::time::Duration::from_secs(host.cfg.stall_secs.max(1));
    let got = crate::source::fetch(&url, &host.layout.downloads(), m.size, stall)?;
    let f = fs_err::File::open(&got.path)?;
    let size = f.metadata()?.len();
    let sha = sha256_of(f.file())?;
    if size != m.size || sha != m.sha256 {
        let _ = fs_err::remove_file(&got.path);
        return crate::host::refuse(format!(
            "{url} gave {size} bytes with sha256 {sha}; the release declares {} bytes with {}",
            m.size, m.sha256
        ));
    }
    let root = store(host)?.context("no model store (data/models): run `comfyctl setup`")?;
    let group = crate::accounts::root_for_group(host);
    let (dir, leaf) = match m.path.rsplit_once('/') {
        Some((d, l)) => (root.ensure_dirs(d, group, 0o2775)?.0, l),
        None => (root.try_clone()?, m.path.as_str()),
    };
    // A name nobody else uses (it is never removed unless this copy made it).
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = format!(".{leaf}.comfyctl-{}-{nanos}", std::process::id());
    // The copy stays open: in the group's folder someone could swap the temp name for their own
    // file before the rename, and what ends up in place must be this copy.
    let Some(copy) = dir.copy_new_file(f.file(), size, &tmp, group, 0o644)? else {
        anyhow::bail!("{} is in the way", dir.path().join(&tmp).display());
    };
    let copied = identity(&copy)?;
    let placed = dir.rename_no_replace(&tmp, leaf);
    let _ = fs_err::remove_file(&got.path);
    if !matches!(placed, Ok(true)) {
        // Still under the temp name: this copy's, unless someone swapped it (then it stays).
        if dir
            .open_file(&tmp, size, None)
            .ok()
            .flatten()
            .and_then(|(f, _)| identity(&f).ok())
            .is_some_and(|i| (i.dev, i.ino) == (copied.dev, copied.ino))
        {
            let _ = dir.remove_file(&tmp);
        }
    }
    if !placed? {
        return crate::host::refuse(format!(
            "{} appeared meanwhile with other content; it is not replaced",
            dir.path().join(leaf).display()
        ));
    }
    let now = dir
        .open_file(leaf, size, None)?
        .map(|(f, _)| identity(&f))
        .transpose()?;
    if now.map(|i| (i.dev, i.ino)) != Some((copied.dev, copied.ino)) {
        return crate::host::refuse(format!(
            "{} was swapped while it was put in place; check it and fetch again",
            dir.path().join(leaf).display()
        ));
    }
    Ok(())
}
