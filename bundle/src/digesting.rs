//! SHA-256 of files whose bytes are read in pieces by several threads: the pack reads each file
//! once, for the frame that holds it, and a large file spans frames made on different threads.
//! Pieces are fed in file order: a thread holding a later piece waits for the earlier ones, which
//! are always in earlier frames, already taken by running threads (frames are taken in order and a
//! thread makes one frame at a time), so the wait ends; a failed pack stops every wait.

use crate::{Error, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

struct Running {
    /// Bytes fed so far.
    next: u64,
    hasher: Sha256,
    digest: Option<[u8; 32]>,
}

struct Slot {
    size: u64,
    state: Mutex<Running>,
    fed: Condvar,
}

/// The files still to hash, by their number in the scan.
pub(crate) struct InOrder {
    slots: HashMap<usize, Slot>,
    stop: AtomicBool,
}

impl InOrder {
    /// Slots for `files` (scan number, size); an empty file's digest is known at once.
    pub(crate) fn new(files: impl IntoIterator<Item = (usize, u64)>) -> Self {
        let slots = files
            .into_iter()
            .map(|(no, size)| {
                let hasher = Sha256::new();
                let digest = (size == 0).then(|| hasher.clone().finalize().into());
                let state = Mutex::new(Running {
                    next: 0,
                    hasher,
                    digest,
                });
                let fed = Condvar::new();
                (no, Slot { size, state, fed })
            })
            .collect();
        Self {
            slots,
            stop: AtomicBool::new(false),
        }
    }

    /// Feeds `bytes`, file `no`'s content from offset `at`, once every byte before `at` is fed.
    pub(crate) fn feed(&self, no: usize, at: u64, bytes: &[u8]) -> Result<()> {
        let Some(slot) = self.slots.get(&no) else {
            return Ok(());
        };
        let mut st = slot.state.lock().map_err(|_| stopped())?;
        while st.next != at {
            if st.next > at || self.stop.load(Ordering::Relaxed) {
                return Err(stopped());
            }
            st = slot
                .fed
                .wait_timeout(st, Duration::from_millis(50))
                .map_err(|_| stopped())?
                .0;
        }
        st.hasher.update(bytes);
        st.next += bytes.len() as u64;
        if st.next == slot.size {
            st.digest = Some(std::mem::take(&mut st.hasher).finalize().into());
        }
        drop(st);
        slot.fed.notify_all();
        Ok(())
    }

    /// Ends every wait: the pack failed.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// The digests, into `digests` (one slot per scanned entry); every file must be complete.
    pub(crate) fn finish(self, digests: &mut [Option<[u8; 32]>]) -> Result<()> {
        for (no, slot) in self.slots {
            let st = slot.state.into_inner().map_err(|_| stopped())?;
            let d = st
                .digest
                .ok_or_else(|| Error::Io(std::io::Error::other("a file was not hashed")))?;
            digests[no] = Some(d);
        }
        Ok(())
    }
}

fn stopped() -> Error {
    Error::Io(std::io::Error::other("the pack stopped"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_fed_out_of_order_from_threads_hash_as_the_whole_file() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let hashing = InOrder::new([(3, data.len() as u64), (4, 0)]);
        let chunks: Vec<(u64, &[u8])> = data
            .chunks(9_999)
            .scan(0u64, |at, c| {
                let r = (*at, c);
                *at += c.len() as u64;
                Some(r)
            })
            .collect();
        std::thread::scope(|s| {
            // Last piece first: each thread waits for the pieces before its own.
            for &(at, c) in chunks.iter().rev() {
                let hashing = &hashing;
                s.spawn(move || hashing.feed(3, at, c).unwrap());
            }
        });
        let mut digests = vec![None; 5];
        hashing.finish(&mut digests).unwrap();
        assert_eq!(digests[3], Some(Sha256::digest(&data).into()));
        assert_eq!(digests[4], Some(Sha256::digest(b"").into()));
        assert_eq!(digests[0], None);
    }

    #[test]
    fn a_stopped_pack_ends_the_wait_and_an_unfinished_file_is_an_error() {
        let hashing = InOrder::new([(0, 10)]);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| hashing.feed(0, 5, b"later"));
            std::thread::sleep(Duration::from_millis(20));
            hashing.stop();
            assert!(waiter.join().unwrap().is_err());
        });
        let mut digests = vec![None; 1];
        assert!(hashing.finish(&mut digests).is_err());
    }
}
