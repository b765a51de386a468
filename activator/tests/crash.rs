//! Crash safety: SIGKILL at every failpoint and at random moments of an unpack; afterwards `current`
//! resolves to a complete release that passes `comfyctl verify`, no staging directory passes for a
//! release, and the next activation succeeds. Plus a full disk and two activations at once.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn check_invariants(h: &TestHost, allowed: &[&str]) {
    let cur = h
        .current()
        .expect("current must exist once a release was activated");
    assert!(
        allowed.contains(&cur.as_str()),
        "current {cur} is not one of the activated releases"
    );
    let v = h.ctl(&["verify"]);
    assert_eq!(
        v.code, 0,
        "current release does not verify: {}{}",
        v.stdout, v.stderr
    );
    let rows = h.ctl(&["releases", "--json"]).json()["items"].clone();
    for r in rows.as_array().unwrap() {
        let id = r["id"].as_str().unwrap();
        assert!(!id.starts_with('.'), "staging {id} listed as a release");
        let v = h.ctl(&["verify", id]);
        assert_eq!(
            v.code, 0,
            "installed release {id} is incomplete: {}{}",
            v.stdout, v.stderr
        );
    }
}

fn big_tree(tag: &str) -> Tree {
    let mut t = Tree::demo(tag);
    for i in 0..300 {
        t.files.push((
            format!("venv/lib/{tag}/m{i:03}.py"),
            format!("# {tag} {i}\n").repeat(200).into_bytes(),
        ));
    }
    for i in 0..8 {
        let mut blob = vec![0u8; 2 << 20];
        for (j, b) in blob.iter_mut().enumerate() {
            *b = ((j * 2_654_435_761usize + i) >> 11) as u8;
        }
        t.files.push((format!("venv/lib/{tag}/big{i}.so"), blob));
    }
    t
}

#[test]
fn sigkill_at_every_failpoint() {
    let points = [
        "activate::locked",
        "activate::before-unpack",
        "activate::unpacked",
        "activate::adopted",
        "activate::renamed",
        "activate::before-switch",
        "switch::before-flip",
        "switch::flipped",
    ];
    for point in points {
        let h = TestHost::new();
        let a = h.bundle("1.0", 1, &Tree::demo("a"));
        let b = h.bundle("1.1", 2, &big_tree("b"));
        let (ida, idb) = (h.id_of(&a), h.id_of(&b));
        h.activate_ok(&a);
        let out: Out = h
            .command(&["activate", b.to_str().unwrap(), "--no-service"])
            .env("COMFYCTL_FAILPOINTS", format!("{point}=kill"))
            .output()
            .unwrap()
            .into();
        assert_eq!(
            out.code, -1,
            "{point}: the process must have been killed: {}",
            out.stderr
        );
        check_invariants(&h, &[&ida, &idb]);
        // After the flip the new release is current; before it, the old one still is.
        let expect = if point == "switch::flipped" {
            &idb
        } else {
            &ida
        };
        assert_eq!(h.current().as_deref(), Some(expect.as_str()), "{point}");
        let out = h.ctl(&["activate", b.to_str().unwrap(), "--no-service", "--json"]);
        assert_eq!(
            out.code, 0,
            "{point}: next activation failed: {}",
            out.stderr
        );
        assert_eq!(h.current().as_deref(), Some(idb.as_str()));
        check_invariants(&h, &[&idb]);
        // The journal knows what happened: rollback goes back to a.
        assert_eq!(h.ctl(&["rollback", "--no-service"]).code, 0, "{point}");
        assert_eq!(h.current().as_deref(), Some(ida.as_str()), "{point}");
    }
}

#[test]
fn sigkill_at_random_moments() {
    let h = TestHost::new();
    let a = h.bundle("1.0", 1, &Tree::demo("a"));
    let (ida, mut allowed) = (h.id_of(&a), Vec::new());
    h.activate_ok(&a);
    allowed.push(ida.clone());
    // Time one full activation of a fresh bundle to spread the kills over it.
    let probe = h.bundle("probe", 2, &big_tree("probe"));
    let t = Instant::now();
    h.activate_ok(&probe);
    let full = t.elapsed();
    allowed.push(h.id_of(&probe));
    assert_eq!(h.ctl(&["rollback", "--to", &ida, "--no-service"]).code, 0);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    // Rounds until ten runs were killed part-way (a kill that lands after a run finished does not
    // count), so how fast this machine is does not decide the outcome.
    let mut killed = 0;
    let mut rounds = 0;
    for round in 0..120u64 {
        if killed >= 10 {
            break;
        }
        rounds += 1;
        let b = h.bundle(
            &format!("r{round}"),
            3 + round,
            &big_tree(&format!("r{round}")),
        );
        allowed.push(h.id_of(&b));
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_micros(seed % (full.as_micros() as u64 + 1));
        let mut child = h
            .command(&["activate", b.to_str().unwrap(), "--no-service"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.code().is_none() {
            killed += 1;
        }
        let allowed_refs: Vec<&str> = allowed.iter().map(String::as_str).collect();
        check_invariants(&h, &allowed_refs);
    }
    assert!(
        killed >= 10,
        "only {killed} of {rounds} runs were killed mid-way"
    );
    let last = h.bundle("final", 100, &big_tree("final"));
    let out = h.ctl(&["activate", last.to_str().unwrap(), "--no-service"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    check_invariants(&h, &[&h.id_of(&last)]);
    let leftovers: Vec<String> = std::fs::read_dir(h.install().join("releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "left behind after the next activation: {leftovers:?}"
    );
}

/// Runs the calling test again in a mount namespace of its own (`unshare --mount`, private
/// propagation), so the tmpfs it mounts is never seen by this machine: true in that child (run
/// the test's body), false in the parent once the child passed.
fn in_private_mount_namespace(test: &str) -> bool {
    const INSIDE: &str = "COMFYCTL_TEST_PRIVATE_MOUNTS";
    if std::env::var_os(INSIDE).is_some() {
        return true;
    }
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{test} in its own mount namespace (needs root: unshare, mount):\n{text}"
    );
    false
}

/// A small tmpfs at the install root, in the test's own mount namespace.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(h: &TestHost, opts: &str) -> Self {
        fs_err::create_dir_all(h.install()).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(h.install())
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs needs root");
        SmallFs(h.install())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
#[cfg_attr(
    not(feature = "host-privileged"),
    ignore = "needs root (a tmpfs); scripts/test.sh runs it"
)]
fn a_release_larger_than_the_free_space_is_refused_before_unpacking() {
    if !in_private_mount_namespace(
        "a_release_larger_than_the_free_space_is_refused_before_unpacking",
    ) {
        return;
    }
    let h = TestHost::new();
    let _fs = SmallFs::mount(&h, "size=6m");
    let a = h.bundle("1.0", 1, &Tree::demo("a"));
    h.activate_ok(&a);
    let before = h.snapshot();
    let b = h.bundle("1.1", 2, &big_tree("b"));
    let out = h.ctl(&["activate", b.to_str().unwrap(), "--no-service"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("bytes of new files") && out.stderr.contains("bytes free"),
        "{}",
        out.stderr
    );
    assert!(
        !fs_err::read_dir(h.install().join("releases"))
            .unwrap()
            .any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".staging")),
        "nothing was unpacked"
    );
    assert_eq!(h.snapshot(), before);
    check_invariants(&h, &[&h.id_of(&a)]);
}

#[test]
#[cfg_attr(
    not(feature = "host-privileged"),
    ignore = "needs root (a tmpfs); scripts/test.sh runs it"
)]
fn a_stale_staging_directory_that_cannot_be_removed_blocks_nothing() {
    if !in_private_mount_namespace(
        "a_stale_staging_directory_that_cannot_be_removed_blocks_nothing",
    ) {
        return;
    }
    let h = TestHost::new();
    let a = h.bundle("1.0", 1, &Tree::demo("a"));
    h.activate_ok(&a);
    // A leftover of a killed activation that rm cannot remove (here: something mounted on it).
    let stale = h.install().join("releases/.staging-0123456789ab-1");
    fs_err::create_dir_all(&stale).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&stale)
        .status()
        .unwrap();
    assert!(st.success(), "mounting a tmpfs needs root");
    let _fs = SmallFs(stale.clone());
    let b = h.bundle("1.1", 2, &Tree::demo("b"));
    let out = h.ctl(&["activate", b.to_str().unwrap(), "--no-service"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("cannot remove stale"), "{}", out.stderr);
    assert_eq!(h.current(), Some(h.id_of(&b)));
}

#[test]
fn more_identical_files_than_an_inode_takes_links_still_activate() {
    let h = TestHost::new();
    // ext4 allows 65,000 links to one inode; the second release links every one of these files
    // to the same store object.
    let tree = |tag: &str| {
        let mut t = Tree::demo(tag);
        for i in 0..66_000 {
            t.files.push((
                format!("venv/lib/same/{:02}/f{i:05}.py", i % 100),
                Vec::new(),
            ));
        }
        t
    };
    let a = h.bundle("1.0", 1, &tree("a"));
    h.activate_ok(&a);
    let b = h.bundle("1.1", 2, &tree("b"));
    let out = h.ctl(&["activate", b.to_str().unwrap(), "--no-service"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(h.ctl(&["verify"]).code, 0);
    // The limit was reached: the second release's identical files sit on more than one inode.
    use std::os::unix::fs::MetadataExt as _;
    let same = h
        .install()
        .join("releases")
        .join(h.id_of(&b))
        .join("venv/lib/same");
    let mut inodes = std::collections::BTreeSet::new();
    for d in fs_err::read_dir(&same).unwrap() {
        for f in fs_err::read_dir(d.unwrap().path()).unwrap() {
            inodes.insert(f.unwrap().metadata().unwrap().ino());
        }
    }
    assert!(
        inodes.len() >= 2,
        "66,000 identical files on {} inode(s): this filesystem takes more links per inode \
         than ext4, so the test did not reach the limit it is about",
        inodes.len()
    );
}

#[test]
fn running_out_of_file_descriptors_is_called_that() {
    let h = TestHost::new();
    let mut t = Tree::demo("a");
    t.files.push((
        "venv/lib/a/b/c/d/e/f/g/h/i/j/k/deep.py".to_owned(),
        b"x\n".to_vec(),
    ));
    let a = h.bundle("1.0", 1, &t);
    let cmd = h.command(&["activate", a.to_str().unwrap(), "--no-service"]);
    let prog = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let out = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 12; exec \"$0\" \"$@\"")
        .arg(prog)
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("unsafe path"), "{err}");
    assert!(err.contains("Too many open files"), "{err}");
    assert!(h.current().is_none());
}

#[test]
#[cfg_attr(
    not(feature = "host-privileged"),
    ignore = "needs root (a tmpfs); scripts/test.sh runs it"
)]
fn full_disk_fails_cleanly() {
    if !in_private_mount_namespace("full_disk_fails_cleanly") {
        return;
    }
    let h = TestHost::new();
    // Bytes fit, inodes do not: the disk fills half-way through the unpack.
    let _fs = SmallFs::mount(&h, "size=64m,nr_inodes=600");
    let a = h.bundle("1.0", 1, &Tree::demo("a"));
    h.activate_ok(&a);
    let before = h.snapshot();
    let mut t = Tree::demo("b");
    for i in 0..1500 {
        t.files.push((
            format!("venv/lib/b/m{i:04}.py"),
            format!("# {i}\n").into_bytes(),
        ));
    }
    let b = h.bundle("1.1", 2, &t);
    let out = h.ctl(&["activate", b.to_str().unwrap(), "--no-service"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("No space left on device"),
        "{}",
        out.stderr
    );
    assert_eq!(
        h.snapshot(),
        before,
        "a failed unpack must leave releases, current and journal as they were"
    );
    check_invariants(&h, &[&h.id_of(&a)]);
}

#[test]
fn concurrent_activations_wait_or_fail_clearly() {
    let h = TestHost::new();
    let a = h.bundle("1.0", 1, &Tree::demo("a"));
    let b = h.bundle("1.1", 2, &Tree::demo("b"));
    let c = h.bundle("1.2", 3, &Tree::demo("c"));
    // One holds the lock (paused at a failpoint until the test lets it go) for longer than the
    // other waits (lock_wait_secs = 2).
    let gate = h.tmp.path().join("gate");
    fs_err::write(&gate, b"").unwrap();
    let mut slow = h
        .command(&["activate", a.to_str().unwrap(), "--no-service"])
        .env(
            "COMFYCTL_FAILPOINTS",
            format!("activate::locked=pause({})", gate.display()),
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let reached = h.tmp.path().join("gate.reached");
    let t = Instant::now();
    while !reached.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the first activation never took the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = h.ctl(&["activate", b.to_str().unwrap(), "--no-service"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("another comfyctl is activating"),
        "{}",
        out.stderr
    );
    fs_err::remove_file(&gate).unwrap();
    assert!(slow.wait().unwrap().success());
    assert_eq!(h.current(), Some(h.id_of(&a)));
    // Two at once without delay: both finish (one waits), and the host is consistent.
    // (--allow-downgrade: whichever goes second may carry the lower sequence.)
    let mut p1 = h
        .command(&[
            "activate",
            b.to_str().unwrap(),
            "--no-service",
            "--allow-downgrade",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut p2 = h
        .command(&[
            "activate",
            c.to_str().unwrap(),
            "--no-service",
            "--allow-downgrade",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (s1, s2) = (p1.wait().unwrap(), p2.wait().unwrap());
    assert!(s1.success() && s2.success(), "{s1:?} {s2:?}");
    let (idb, idc) = (h.id_of(&b), h.id_of(&c));
    check_invariants(&h, &[&idb, &idc]);
    let rows = h.ctl(&["releases", "--json"]).json()["items"].clone();
    assert!(rows
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["status"] == "good"));
}
