//! The stream's writer threads: each file's content, as pieces of the decompressed frames (no
//! copy), is hashed and written on a pool of threads while the consumer goes on checking tar
//! headers. A file is finished only after its hash matched; the first failure in manifest order
//! is the one reported, wherever it happened.

use crate::stream::FileOut;
use crate::{Error, Result};
use sha2::{Digest, Sha256};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};

/// A decompressed frame. Pieces of it travel to the writers; its buffer goes back to the
/// decompressors (freeing a place in the window) when the last piece is dropped.
pub(crate) struct FrameBuf {
    pub(crate) data: Vec<u8>,
    pub(crate) home: SyncSender<Vec<u8>>,
}

impl Drop for FrameBuf {
    fn drop(&mut self) {
        let _ = self.home.try_send(std::mem::take(&mut self.data));
    }
}

/// A range of a decompressed frame.
pub(crate) struct Piece(pub(crate) Arc<FrameBuf>, pub(crate) Range<usize>);

impl Piece {
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0.data[self.1.clone()]
    }
}

/// A file lying in one piece of one frame goes to a writer whole; a longer one streams to one
/// writer piece by piece, a few pieces ahead.
pub(crate) const PIECE_MAX: u64 = 1 << 20;
pub(crate) const STREAM_AHEAD: usize = 4;
/// Files handed over and not yet taken by a writer.
pub(crate) const QUEUE: usize = 64;

pub(crate) enum Body {
    Whole(Vec<Piece>),
    Streamed(Receiver<Piece>),
}

pub(crate) struct Job {
    pub(crate) index: usize,
    pub(crate) path: String,
    pub(crate) size: u64,
    pub(crate) sha256: [u8; 32],
    pub(crate) out: Box<dyn FileOut>,
    pub(crate) body: Body,
}

/// The first failure in manifest order, wherever it happened (a writer or the consumer).
pub(crate) struct Failed {
    /// (entry, rank, error): at one entry, a writer's own error (rank 0) beats "a writer stopped" (rank 1).
    pub(crate) first: Mutex<Option<(usize, u8, Error)>>,
    /// The entry of the first failure so far; `usize::MAX` while none.
    at: AtomicUsize,
}

impl Failed {
    pub(crate) fn new() -> Self {
        Self {
            first: Mutex::new(None),
            at: AtomicUsize::new(usize::MAX),
        }
    }

    pub(crate) fn record(&self, index: usize, rank: u8, e: Error) {
        if let Ok(mut f) = self.first.lock() {
            if f.as_ref().is_none_or(|(i, r, _)| (index, rank) < (*i, *r)) {
                *f = Some((index, rank, e));
            }
        }
        self.at.fetch_min(index, Ordering::Relaxed);
    }

    /// Whether an entry before `index` failed: work on `index` is of no use.
    pub(crate) fn before(&self, index: usize) -> bool {
        self.at.load(Ordering::Relaxed) < index
    }
}

pub(crate) fn writer(jobs: &Mutex<Receiver<Job>>, failed: &Failed) {
    loop {
        let job = match jobs.lock().map(|j| j.recv()) {
            Ok(Ok(job)) => job,
            _ => return,
        };
        // Files before the first failure are still checked, so the earliest one is reported.
        if failed.before(job.index) {
            continue;
        }
        let index = job.index;
        if let Err(e) = write_job(job) {
            failed.record(index, 0, e);
        }
    }
}

/// Hashes and writes one file; `Ok` without finishing when the consumer gave up on it (the
/// consumer reports why).
fn write_job(job: Job) -> Result<()> {
    let Job {
        path,
        size,
        sha256,
        mut out,
        body,
        ..
    } = job;
    let mut h = Sha256::new();
    let mut got = 0u64;
    let mut take = |p: Piece| -> Result<()> {
        h.update(p.bytes());
        got += p.bytes().len() as u64;
        out.write(p.bytes())
    };
    match body {
        Body::Whole(pieces) => pieces.into_iter().try_for_each(&mut take)?,
        Body::Streamed(rx) => rx.into_iter().try_for_each(&mut take)?,
    }
    if got != size {
        return Ok(());
    }
    if h.finalize()[..] != sha256[..] {
        return Err(Error::DigestMismatch { path });
    }
    out.finish()
}

pub(crate) const WRITER_STOPPED: &str = "a file writer stopped";

/// The consumer's end of the writers.
pub(crate) struct Writers<'a> {
    pub(crate) jobs: SyncSender<Job>,
    pub(crate) failed: &'a Failed,
}

impl Writers<'_> {
    pub(crate) fn stopped(&self) -> Error {
        Error::Io(std::io::Error::other(WRITER_STOPPED))
    }
    pub(crate) fn send(&self, job: Job) -> Result<()> {
        self.jobs.send(job).map_err(|_| self.stopped())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(s: &str) -> Error {
        Error::Io(std::io::Error::other(s.to_owned()))
    }

    #[test]
    fn the_earliest_entry_wins_whatever_the_order_failures_arrive_in() {
        let f = Failed::new();
        assert!(!f.before(usize::MAX - 1));
        f.record(5, 0, io("five"));
        f.record(1, 1, io("one, stopped"));
        f.record(1, 0, io("one, its own"));
        f.record(1, 1, io("one, stopped again"));
        f.record(3, 0, io("three"));
        assert!(f.before(2) && !f.before(1));
        let first = f.first.lock().unwrap().take();
        assert!(
            matches!(&first, Some((1, 0, e)) if e.to_string().contains("one, its own")),
            "{first:?}"
        );
    }
}
