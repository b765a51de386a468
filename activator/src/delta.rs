//! Delta download: with HTTP Range, fetch the footer, the frame index and the signed first frame,
//! verify the signature, then fetch only the frames holding files this host's store lacks. They are
//! written at their offsets into a sparse local copy; the frames left out are holes the extraction
//! never reads (if it did, the frame would fail to decompress and the bundle would be refused).

use crate::source::Fetched;
use crate::store::Store;
use anyhow::{bail, Context as _, Result};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::Path;

/// The most a bundle's frame index may take (a 9 GB release's is a few hundred KB).
const MAX_INDEX: u64 = 64 << 20;

/// GETs `url` with `Range: bytes={spec}` and streams exactly `want` bytes of the 206 body into
/// `out`. A body of any other length is refused after reading at most `want + 1` bytes: a bad
/// mirror or an interceptor cannot make a range request cost more than what was asked for.
/// Returns the bundle's total length from `Content-Range`.
fn range(
    client: &reqwest::blocking::Client,
    url: &str,
    spec: &str,
    want: u64,
    out: &mut dyn std::io::Write,
) -> Result<Option<u64>> {
    let resp = client
        .get(url)
        .header(reqwest::header::RANGE, format!("bytes={spec}"))
        .send()
        .with_context(|| format!("fetching {url}"))?;
    if resp.status().as_u16() != 206 {
        bail!(
            "{url} does not serve byte ranges (answered {})",
            resp.status()
        );
    }
    let total = resp
        .headers()
        .get(reqwest::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit('/').next())
        .and_then(|t| t.parse().ok());
    let n = std::io::copy(&mut resp.take(want + 1), out)
        .with_context(|| format!("fetching bytes {spec} of {url}"))?;
    if n != want {
        bail!(
            "{url}: asked for {want} bytes (range {spec}), the server sent {}",
            if n > want {
                "more".to_owned()
            } else {
                n.to_string()
            }
        );
    }
    Ok(total)
}

/// A remote bundle whose footer, index and signed first frame are in a sparse local file.
pub struct Remote {
    client: reqwest::blocking::Client,
    url: String,
    file: fs_err::File,
    /// Opened from the local copy: the signature is checked, the manifest parsed.
    pub bundle: bundle::Bundle,
    /// Bytes fetched so far.
    pub fetched: u64,
    /// The bundle's whole length.
    pub total: u64,
}

/// GETs bytes `from..to` of `url` into `file` at the same offset, streamed.
fn get_into(
    client: &reqwest::blocking::Client,
    url: &str,
    file: &mut fs_err::File,
    from: u64,
    to: u64,
) -> Result<u64> {
    file.seek(SeekFrom::Start(from))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, &mut *file);
    range(
        client,
        url,
        &format!("{from}-{}", to - 1),
        to - from,
        &mut w,
    )?;
    w.flush()?;
    Ok(to - from)
}

impl Remote {
    /// Fetches what a host needs to know a bundle (footer, frame index, manifest and signature)
    /// into `dest`, and checks the signature before anything is planned from the manifest.
    pub fn open(
        url: &str,
        dest: &Path,
        trusted: &keys::TrustedKeys,
        max_bytes: u64,
        stall: std::time::Duration,
    ) -> Result<Self> {
        let client = crate::source::http_client(stall)?;
        let mut footer = Vec::with_capacity(16);
        let total = range(&client, url, "-16", 16, &mut footer)?;
        let total = total.context("the server did not say how long the bundle is")?;
        if total > max_bytes {
            return crate::host::refuse(format!(
                "{url} is {total} bytes, over this host's limit of {max_bytes}"
            ));
        }
        let footer: [u8; 16] = footer.as_slice().try_into().context("short footer")?;
        let idx_len = bundle::index::frame_len_from_footer(&footer)?;
        let mut file = fs_err::File::create(dest)?;
        file.set_len(total)?;
        let mut fetched = 16u64;
        let idx_at = total
            .checked_sub(idx_len)
            .context("index longer than the bundle")?;
        if idx_len > MAX_INDEX {
            bail!(
                "{url}: its frame index claims {idx_len} bytes, more than any bundle's ({MAX_INDEX})"
            );
        }
        let mut idx = Vec::with_capacity(idx_len as usize);
        range(
            &client,
            url,
            &format!("{idx_at}-{}", total - 1),
            idx_len,
            &mut idx,
        )?;
        fetched += idx.len() as u64;
        file.seek(SeekFrom::Start(idx_at))?;
        file.write_all(&idx)?;
        let frames = bundle::index::decode(&idx, idx_at)?;
        let f0 = frames[0];
        fetched += get_into(
            &client,
            url,
            &mut file,
            f0.comp_offset,
            f0.comp_offset + f0.comp_len,
        )?;
        file.sync_all()?;
        // The signature is checked before anything is planned from the manifest.
        let bundle = bundle::Bundle::open(dest, trusted)?;
        Ok(Remote {
            client,
            url: url.to_owned(),
            file,
            bundle,
            fetched,
            total,
        })
    }

    /// Neighbouring frames this host's store lacks, as byte runs, one request each.
    pub fn runs(&self, store: &Store) -> Vec<(u64, u64)> {
        let b = &self.bundle;
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for f in b.frames_needed(store).iter().map(|i| b.frames[*i]) {
            match runs.last_mut() {
                Some(r) if r.1 == f.comp_offset => r.1 += f.comp_len,
                _ => runs.push((f.comp_offset, f.comp_offset + f.comp_len)),
            }
        }
        runs
    }

    /// The bytes a delta fetch would still download for this host.
    pub fn still_to_fetch(&self, store: &Store) -> u64 {
        self.runs(store).iter().map(|(a, b)| b - a).sum()
    }
}

/// Tries a delta download of `url` into `dest`; an error means "fall back to a full download".
pub fn fetch(
    url: &str,
    dest: &Path,
    store: &Store,
    trusted: &keys::TrustedKeys,
    max_bytes: u64,
    stall: std::time::Duration,
) -> Result<Fetched> {
    let mut r = Remote::open(url, dest, trusted, max_bytes, stall)?;
    for (from, to) in r.runs(store) {
        r.fetched += get_into(&r.client, &r.url, &mut r.file, from, to)?;
    }
    r.file.sync_all()?;
    Ok(Fetched {
        path: dest.to_owned(),
        downloaded: r.fetched,
        resumed_from: 0,
        delta: Some(r.total),
    })
}
