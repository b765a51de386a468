//! The verifying payload stream. Worker threads decompress frames in parallel (a bounded window ahead),
//! one consumer walks the tar stream in order and demands that entry `i` is exactly the manifest's
//! `files[i]`: same header bytes. File contents go, as pieces of the decompressed frames (no copy),
//! to writer threads that hash and write them in parallel; a file is finished only after its content
//! hash matched, and the first failure in manifest order is the stream's.

use crate::index::{Frame, NO_ENTRY};
use crate::layout::MAX_FRAME_RAW;
use crate::manifest::{Entry, Kind};
use crate::paths::check_path;
use crate::reader::{read_frame_into, Bundle};
use crate::tarfmt::{checksum_ok, forbidden_kind, padding, push_header, HeaderKind, BLOCK};
use crate::writers::{
    writer, Body, Failed, FrameBuf, Job, Piece, Writers, PIECE_MAX, QUEUE, STREAM_AHEAD,
    WRITER_STOPPED,
};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

/// Receives verified entries in manifest order (directories before what they hold).
pub trait Sink {
    fn dir(&mut self, e: &Entry) -> Result<()>;
    fn symlink(&mut self, e: &Entry, target: &str) -> Result<()>;
    /// Where file `e`'s content goes. The writer runs on a writer thread: it is given the content
    /// in order, and finished only after the content hash matched.
    fn file(&mut self, e: &Entry) -> Result<Box<dyn FileOut>>;
    /// Makes a file the caller marked reusable from its own copy (its content is not in the stream).
    fn reuse_file(&mut self, e: &Entry) -> Result<()> {
        Err(Error::Io(std::io::Error::other(format!(
            "{:?}: this sink cannot reuse files",
            e.path
        ))))
    }
}

/// One file's content on its way out, on a writer thread.
pub trait FileOut: Send {
    fn write(&mut self, data: &[u8]) -> Result<()>;
    /// The content is complete and its hash matched.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// A sink that keeps nothing: verification only.
pub struct NullSink;

struct NullOut;

impl FileOut for NullOut {
    fn write(&mut self, _: &[u8]) -> Result<()> {
        Ok(())
    }
    fn finish(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

impl Sink for NullSink {
    fn dir(&mut self, _: &Entry) -> Result<()> {
        Ok(())
    }
    fn symlink(&mut self, _: &Entry, _: &str) -> Result<()> {
        Ok(())
    }
    fn file(&mut self, _: &Entry) -> Result<Box<dyn FileOut>> {
        Ok(Box::new(NullOut))
    }
}

type FrameResult = (usize, Result<Vec<u8>>);

/// Entry number meaning "no more stream": every remaining entry comes from the store.
const STREAM_END: u64 = u64::MAX;

fn bad_index(detail: &str) -> Error {
    Error::NotABundle(format!(
        "frame index is inconsistent with the manifest: {detail}"
    ))
}

/// The frames to read (in order) as one byte stream. Frames left out are gaps: when the stream jumps
/// over one, `gap` says which entry's header the next frame starts with (from the index, checked by
/// the header comparison that follows).
struct Chain<'a> {
    frames: &'a [Frame],
    order: Vec<usize>,
    rx: Receiver<FrameResult>,
    /// Frame buffers going back to the workers: one frees a place in the window.
    tokens: SyncSender<Vec<u8>>,
    pending: BTreeMap<usize, Result<Vec<u8>>>,
    k: usize,
    cur: Arc<FrameBuf>,
    cur_frame: usize,
    pos: usize,
    gap: Option<u64>,
}

impl Chain<'_> {
    /// Whether the next frame to load directly follows the current one.
    fn next_is_contiguous(&self) -> bool {
        self.order
            .get(self.k)
            .is_some_and(|f| *f == self.cur_frame + 1)
    }

    /// Loads the next frame of `order`; false when none is left.
    fn load_next(&mut self) -> Result<bool> {
        let Some(&f) = self.order.get(self.k) else {
            return Ok(false);
        };
        let frame = loop {
            if let Some(r) = self.pending.remove(&self.k) {
                break r;
            }
            let (no, r) = self
                .rx
                .recv()
                .map_err(|_| Error::Io(std::io::Error::other("decompression workers stopped")))?;
            self.pending.insert(no, r);
        };
        let contiguous = f == self.cur_frame + 1;
        // The frame left behind goes back to the workers once no writer holds a piece of it.
        self.cur = Arc::new(FrameBuf {
            data: frame?,
            home: self.tokens.clone(),
        });
        self.k += 1;
        self.pos = 0;
        if !contiguous {
            let fr = &self.frames[f];
            if fr.start_entry == NO_ENTRY {
                return Err(bad_index("a frame after a skipped one starts no entry"));
            }
            self.pos = fr.start_offset as usize;
            self.gap = Some(fr.start_entry);
        }
        self.cur_frame = f;
        Ok(true)
    }

    /// Up to `max` bytes of the current frame; empty only at the end of the stream. Running into a
    /// skipped frame in the middle of an entry means the index lied.
    fn chunk(&mut self, max: usize) -> Result<&[u8]> {
        let r = self.next_range(max)?;
        Ok(&self.cur.data[r])
    }

    /// Like [`Chain::chunk`], as a piece that outlives the current frame.
    fn piece(&mut self, max: usize) -> Result<Piece> {
        let r = self.next_range(max)?;
        Ok(Piece(self.cur.clone(), r))
    }

    fn next_range(&mut self, max: usize) -> Result<Range<usize>> {
        while self.pos == self.cur.data.len() {
            if !self.next_is_contiguous() {
                if self.k == self.order.len() {
                    return Ok(self.pos..self.pos);
                }
                return Err(bad_index("an entry continues into a skipped frame"));
            }
            self.load_next()?;
        }
        let n = max.min(self.cur.data.len() - self.pos);
        self.pos += n;
        Ok(self.pos - n..self.pos)
    }

    fn read_exact(&mut self, mut buf: &mut [u8], what: &dyn Fn() -> String) -> Result<()> {
        while !buf.is_empty() {
            let c = self.chunk(buf.len())?;
            if c.is_empty() {
                return Err(Error::Truncated(format!("payload ends inside {}", what())));
            }
            let n = c.len();
            buf[..n].copy_from_slice(c);
            buf = &mut buf[n..];
        }
        Ok(())
    }

    /// At an entry boundary: if the current frame is used up and the next one to read is not its
    /// neighbour, jump to it and return the entry its first header belongs to.
    fn settle(&mut self) -> Result<Option<u64>> {
        if self.pos == self.cur.data.len() && !self.next_is_contiguous() && !self.load_next()? {
            return Ok(Some(STREAM_END));
        }
        Ok(self.gap.take())
    }

    /// Skips `n` bytes of an entry whose content is not needed (it comes from the store), possibly
    /// over skipped frames.
    fn skip(&mut self, mut n: u64) -> Result<()> {
        loop {
            let avail = (self.cur.data.len() - self.pos) as u64;
            if n <= avail {
                self.pos += n as usize;
                return Ok(());
            }
            n -= avail;
            self.pos = self.cur.data.len();
            if self.next_is_contiguous() {
                self.load_next()?;
                continue;
            }
            let target =
                self.frames[self.cur_frame].raw_offset + self.frames[self.cur_frame].raw_len + n;
            if !self.load_next()? {
                self.gap = Some(STREAM_END);
                return Ok(());
            }
            let fr = &self.frames[self.cur_frame];
            if fr.raw_offset + (self.pos as u64) < target {
                return Err(bad_index(
                    "a frame after a skipped one starts inside a skipped entry",
                ));
            }
            return Ok(());
        }
    }

    fn at_end(&mut self) -> Result<bool> {
        self.chunk(0)?;
        Ok(self.pos == self.cur.data.len() && self.k == self.order.len())
    }
}

fn decompress_worker(
    b: &Bundle,
    order: &[usize],
    next: &AtomicUsize,
    tokens: &Mutex<Receiver<Vec<u8>>>,
    tx: &SyncSender<FrameResult>,
) {
    let Ok(mut dctx) = zstd::bulk::Decompressor::new() else {
        return;
    };
    let mut comp = Vec::new();
    loop {
        let mut raw = match tokens.lock().map(|t| t.recv()) {
            Ok(Ok(buf)) => buf,
            _ => return,
        };
        let k = next.fetch_add(1, Ordering::Relaxed);
        let Some(&no) = order.get(k) else { return };
        let r = read_frame_into(
            &b.file,
            no,
            &b.frames[no],
            MAX_FRAME_RAW,
            &mut dctx,
            &mut comp,
            &mut raw,
        )
        .map(|()| raw);
        if tx.send((k, r)).is_err() {
            return;
        }
    }
}

fn mismatch(path: &str, detail: impl Into<String>) -> Error {
    Error::EntryMismatch {
        path: path.to_owned(),
        detail: detail.into(),
    }
}

/// Names what went wrong when the tar stream holds `found` where the manifest expects `files[i]`.
fn misplaced(files: &[Entry], i: usize, found: &str) -> Error {
    let find = |s: &[Entry]| {
        s.binary_search_by(|e| e.path.as_bytes().cmp(found.as_bytes()))
            .is_ok()
    };
    if find(&files[..i]) {
        Error::DuplicateEntry {
            path: found.to_owned(),
        }
    } else if find(&files[i..]) {
        Error::MissingEntry {
            path: files[i].path.clone(),
        }
    } else {
        Error::UnexpectedEntry {
            path: found.to_owned(),
        }
    }
}

fn describe_header_difference(e: &Entry, block: &[u8; BLOCK], size: u64) -> Error {
    let h = tar::Header::from_byte_slice(block);
    let ty = block[156];
    let want_ty = match e.kind {
        Kind::Dir => b'5',
        Kind::File { .. } => b'0',
        Kind::Symlink { .. } => b'2',
    };
    if ty != want_ty {
        return mismatch(
            &e.path,
            format!(
                "tar type {:?}, the manifest says {:?}",
                ty as char, want_ty as char
            ),
        );
    }
    if size != e.size() {
        return mismatch(
            &e.path,
            format!("tar size {size}, the manifest says {}", e.size()),
        );
    }
    if let Ok(mode) = h.mode() {
        if mode != e.mode() {
            return mismatch(
                &e.path,
                format!("mode {mode:04o}, the manifest says {:04o}", e.mode()),
            );
        }
    }
    if let Kind::Symlink { target } = &e.kind {
        return mismatch(&e.path, format!("link target differs from {target:?}"));
    }
    mismatch(
        &e.path,
        "tar header fields (owner, time or format) are not canonical",
    )
}

/// One entry's headers as read: its full name, the header block, and every header byte (long-name records too).
struct Headers {
    name: String,
    block: [u8; BLOCK],
    raw: Vec<u8>,
}

/// Reads one entry's headers; `None` at the end-of-archive marker.
fn read_headers(ch: &mut Chain, files: &[Entry], i: usize) -> Result<Option<Headers>> {
    let what = || match files.get(i) {
        Some(e) => format!("the header of {:?}", e.path),
        None => "the end-of-archive blocks".to_owned(),
    };
    let mut raw = Vec::with_capacity(BLOCK);
    let mut long_name: Option<Vec<u8>> = None;
    loop {
        let mut block = [0u8; BLOCK];
        ch.read_exact(&mut block, &what)?;
        if block.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        if !checksum_ok(&block) {
            return Err(Error::EntryMismatch {
                path: files
                    .get(i)
                    .map_or_else(|| "<end>".to_owned(), |e| e.path.clone()),
                detail: "corrupt tar header (bad checksum)".into(),
            });
        }
        raw.extend_from_slice(&block);
        let h = tar::Header::from_byte_slice(&block);
        let ty = block[156];
        let size = h
            .entry_size()
            .map_err(|_| mismatch("<header>", "unparseable size field"))?;
        if let Some(kind) = forbidden_kind(ty) {
            let name = long_name
                .clone()
                .unwrap_or_else(|| h.path_bytes().into_owned());
            return Err(Error::ForbiddenEntry {
                path: String::from_utf8_lossy(&name).into_owned(),
                kind,
            });
        }
        if ty == b'L' || ty == b'K' {
            if size > 4097 {
                return Err(Error::LimitExceeded(format!(
                    "GNU long name record of {size} bytes"
                )));
            }
            let mut data = vec![0u8; size as usize + padding(size)];
            ch.read_exact(&mut data, &what)?;
            raw.extend_from_slice(&data);
            data.truncate(size as usize);
            if data.last() == Some(&0) {
                data.pop();
            }
            if ty == b'L' {
                long_name = Some(data);
            }
            continue;
        }
        let mut name = long_name.unwrap_or_else(|| h.path_bytes().into_owned());
        if ty == b'5' && name.last() == Some(&b'/') {
            name.pop();
        }
        let name = String::from_utf8(name).map_err(|e| Error::UnsafePath {
            path: String::from_utf8_lossy(e.as_bytes()).into_owned(),
            reason: "name is not UTF-8",
        })?;
        return Ok(Some(Headers { name, block, raw }));
    }
}

/// Frames that hold any byte of an entry not in `reusable` (the last frame always, for the
/// end-of-archive check). With no reusable entries that is every payload frame.
pub(crate) fn needed_frames(frames: &[Frame], reusable: &[bool]) -> Vec<usize> {
    let last = frames.len() - 1;
    (1..frames.len())
        .filter(|&f| {
            let fr = &frames[f];
            f == last
                || (fr.first_entry..=fr.last_entry)
                    .any(|e| e >= 2 && reusable.get((e - 2) as usize).is_none_or(|r| !r))
        })
        .collect()
}

/// Streams the payload of `b` through `sink`, verifying every entry read. Files marked in `reusable`
/// (one flag per manifest entry; empty = none) are handed to [`Sink::reuse_file`] instead, and frames
/// holding nothing else are never read or decompressed.
pub fn stream(
    b: &Bundle,
    jobs: usize,
    reusable: &[bool],
    sink: &mut dyn Sink,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    let frames = &b.frames;
    if frames.len() < 2 {
        return Err(Error::Truncated("the bundle has no payload frames".into()));
    }
    let order = needed_frames(frames, reusable);
    let jobs = jobs.max(1);
    // Frame buffers: one per decompressor, the consumer's current frame, and one held by writers
    // still hashing the frame before it. The consumer's first (empty) current frame joins them
    // when it is dropped.
    let window = jobs + 2;
    let next = AtomicUsize::new(0);
    let (tok_tx, tok_rx) = sync_channel::<Vec<u8>>(window);
    for _ in 0..window - 1 {
        let _ = tok_tx.try_send(Vec::new());
    }
    let tok_rx = Mutex::new(tok_rx);
    let (tx, rx) = sync_channel::<FrameResult>(window);
    let (job_tx, job_rx) = sync_channel::<Job>(QUEUE);
    let job_rx = Mutex::new(job_rx);
    let failed = Failed::new();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            let tx = tx.clone();
            let (next, tok_rx, order) = (&next, &tok_rx, &order);
            s.spawn(move || decompress_worker(b, order, next, tok_rx, &tx));
        }
        drop(tx);
        let writers: Vec<_> = (0..jobs)
            .map(|_| s.spawn(|| writer(&job_rx, &failed)))
            .collect();
        let mut ch = Chain {
            frames,
            order: order.clone(),
            rx,
            cur: Arc::new(FrameBuf {
                data: Vec::new(),
                home: tok_tx.clone(),
            }),
            tokens: tok_tx,
            pending: BTreeMap::new(),
            k: 0,
            cur_frame: 0,
            pos: 0,
            gap: None,
        };
        let out = Writers {
            jobs: job_tx,
            failed: &failed,
        };
        let mut at = 0;
        if let Err(e) = consume(b, &mut ch, reusable, sink, &out, &mut at, progress) {
            let rank = u8::from(matches!(&e, Error::Io(io) if io.to_string() == WRITER_STOPPED));
            failed.record(at, rank, e);
        }
        // Closing the queue lets the writers finish; closing the chain stops the decompressors.
        drop(out);
        drop(ch);
        // Every writer is joined (no short cut): a panic in any means a file may be missing.
        let joined: Vec<bool> = writers.into_iter().map(|w| w.join().is_ok()).collect();
        let panicked = joined.contains(&false);
        match failed.first.lock().map(|mut f| f.take()) {
            Ok(Some((_, _, e))) => Err(e),
            Ok(None) if !panicked => Ok(()),
            _ => Err(Error::Io(std::io::Error::other("a file writer panicked"))),
        }
    })
}

fn consume(
    b: &Bundle,
    ch: &mut Chain,
    reusable: &[bool],
    sink: &mut dyn Sink,
    out: &Writers,
    at: &mut usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    let files = &b.manifest.files;
    let mtime = b.manifest.source_date_epoch;
    let mut expect = Vec::with_capacity(2 * BLOCK);
    let mut done_bytes = 0u64;
    let is_reusable = |i: usize| reusable.get(i).copied().unwrap_or(false);
    // Entry number of the next header in the stream.
    let mut next_hdr = ch.settle()?.unwrap_or(2);
    for (i, e) in files.iter().enumerate() {
        *at = i;
        if out.failed.before(i) {
            return Err(out.stopped());
        }
        let entry_no = i as u64 + 2;
        if entry_no < next_hdr {
            // Inside skipped frames: the entry is made from the manifest and the store alone.
            match &e.kind {
                Kind::Dir => sink.dir(e)?,
                Kind::Symlink { target } => sink.symlink(e, target)?,
                Kind::File { size, .. } if is_reusable(i) => {
                    sink.reuse_file(e)?;
                    done_bytes += size;
                    progress(done_bytes);
                }
                Kind::File { .. } => {
                    return Err(bad_index("a needed file lies in a skipped frame"))
                }
            }
            continue;
        }
        if entry_no > next_hdr {
            return Err(bad_index(
                "a frame claims to start at a later entry than the stream reached",
            ));
        }
        let Some(Headers { name, block, raw }) = read_headers(ch, files, i)? else {
            return Err(Error::MissingEntry {
                path: e.path.clone(),
            });
        };
        if name != e.path {
            check_path(&name)?;
            return Err(misplaced(files, i, &name));
        }
        expect.clear();
        let hk = match &e.kind {
            Kind::Dir => HeaderKind::Dir,
            Kind::File { size, .. } => HeaderKind::File {
                mode: e.mode(),
                size: *size,
            },
            Kind::Symlink { target } => HeaderKind::Symlink { target },
        };
        push_header(&mut expect, &e.path, hk, mtime);
        if expect != raw {
            let size = tar::Header::from_byte_slice(&block)
                .entry_size()
                .unwrap_or(u64::MAX);
            return Err(describe_header_difference(e, &block, size));
        }
        match &e.kind {
            Kind::Dir => sink.dir(e)?,
            Kind::Symlink { target } => sink.symlink(e, target)?,
            Kind::File { size, .. } if is_reusable(i) => {
                sink.reuse_file(e)?;
                ch.skip(size + padding(*size) as u64)?;
                done_bytes += size;
                progress(done_bytes);
            }
            Kind::File { size, sha256, .. } => {
                let mut job = Some(Job {
                    index: i,
                    path: e.path.clone(),
                    size: *size,
                    sha256: *sha256,
                    out: sink.file(e)?,
                    body: Body::Whole(Vec::new()),
                });
                let mut left = *size;
                let mut streamed: Option<SyncSender<Piece>> = None;
                while left > 0 {
                    let p = ch.piece(left.min(PIECE_MAX) as usize)?;
                    let n = p.1.len() as u64;
                    if n == 0 {
                        return Err(Error::Truncated(format!(
                            "payload ends inside {:?}",
                            e.path
                        )));
                    }
                    left -= n;
                    done_bytes += n;
                    if let Some(tx) = &streamed {
                        tx.send(p).map_err(|_| out.stopped())?;
                    } else if let (0, Some(j)) = (left, job.as_mut()) {
                        // The whole file in one piece of one frame: handed over at once.
                        j.body = Body::Whole(vec![p]);
                    } else if let Some(mut j) = job.take() {
                        // Anything longer streams: gathering it would hold frames the
                        // decompressors need to get to its end.
                        let (tx, rx) = sync_channel(STREAM_AHEAD);
                        tx.send(p).map_err(|_| out.stopped())?;
                        j.body = Body::Streamed(rx);
                        out.send(j)?;
                        streamed = Some(tx);
                    }
                }
                if let Some(j) = job {
                    out.send(j)?;
                }
                drop(streamed);
                let mut pad = [0u8; BLOCK];
                let pad = &mut pad[..padding(*size)];
                ch.read_exact(pad, &|| format!("the padding of {:?}", e.path))?;
                if pad.iter().any(|b| *b != 0) {
                    return Err(mismatch(&e.path, "non-zero padding after the content"));
                }
                progress(done_bytes);
            }
        }
        next_hdr = match ch.gap.take() {
            Some(g) => g,
            None => ch.settle()?.unwrap_or(entry_no + 1),
        };
    }
    // What follows is the end of the archive: past every entry.
    *at = files.len();
    if next_hdr > files.len() as u64 + 2 {
        return Err(bad_index("the last frame was skipped"));
    }
    if next_hdr < files.len() as u64 + 2 {
        return Err(bad_index(
            "the stream resumes before the end of the archive",
        ));
    }
    match read_headers(ch, files, files.len())? {
        None => {}
        Some(Headers { name, .. }) => {
            check_path(&name)?;
            return Err(misplaced(files, files.len(), &name));
        }
    }
    let mut second = [0u8; BLOCK];
    ch.read_exact(&mut second, &|| "the end-of-archive blocks".into())?;
    if second.iter().any(|b| *b != 0) || !ch.at_end()? {
        return Err(Error::NotABundle(
            "data after the end of the archive".into(),
        ));
    }
    Ok(())
}
