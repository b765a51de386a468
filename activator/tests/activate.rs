//! comfyctl's core verbs against a scratch root: activate, re-activate, rollback, releases, status,
//! verify, gc, and every refusal leaving the host as it was.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt as _;

#[test]
fn activate_switch_and_roll_back() {
    let h = TestHost::new();
    let a = h.bundle("1.0", 1, &Tree::demo("a"));
    let b = h.bundle("1.1", 2, &Tree::demo("b"));
    let (ida, idb) = (h.id_of(&a), h.id_of(&b));

    let out = h.ctl(&["activate", a.to_str().unwrap(), "--no-service", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    assert_eq!(r["changed"], true);
    assert_eq!(r["id"], ida.as_str());
    assert_eq!(h.current().as_deref(), Some(ida.as_str()));
    // The seed's paths resolve through current.
    let main = fs_err::read_to_string(h.install().join("ComfyUI/main.py")).unwrap();
    assert_eq!(main, "print('a')\n");
    assert!(h.install().join("venv/bin/python").exists());
    // Releases are immutable.
    let mode = fs_err::metadata(h.install().join("current/ComfyUI/main.py"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o222, 0, "release files must be read-only");

    // Re-activation is idempotent.
    let again = h.ctl(&["activate", a.to_str().unwrap(), "--no-service", "--json"]);
    assert_eq!(again.code, 0);
    assert_eq!(again.json()["changed"], false);

    let out = h.ctl(&["activate", b.to_str().unwrap(), "--no-service", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    assert_eq!(r["previous"], ida.as_str());
    // All 40 blobs and site.py are shared with release a: only main.py is new.
    assert_eq!(r["files_written"], 1, "{r}");
    assert_eq!(
        fs_err::read_to_string(h.install().join("ComfyUI/main.py")).unwrap(),
        "print('b')\n"
    );

    let out = h.ctl(&["rollback", "--no-service", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    assert_eq!(r["to"], ida.as_str());
    assert_eq!(h.current().as_deref(), Some(ida.as_str()));
    assert_eq!(
        fs_err::read_to_string(h.install().join("ComfyUI/main.py")).unwrap(),
        "print('a')\n"
    );

    // Rolling back again goes to b (the previous good one now), and --to picks explicitly.
    assert_eq!(h.ctl(&["rollback", "--no-service"]).code, 0);
    assert_eq!(h.current().as_deref(), Some(idb.as_str()));
    assert_eq!(
        h.ctl(&["rollback", "--to", &ida[..8], "--no-service"]).code,
        0
    );
    assert_eq!(h.current().as_deref(), Some(ida.as_str()));

    let rel = h.ctl(&["releases", "--json"]).json()["items"].clone();
    let rows = rel.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows
        .iter()
        .any(|r| r["id"] == ida.as_str() && r["current"] == true && r["status"] == "good"));
    let st = h.ctl(&["status", "--json"]).json();
    assert_eq!(st["current"]["id"], ida.as_str());
    assert_eq!(st["previous_good"], idb.as_str());
    assert_eq!(st["highest_sequence"], 2);
    let v = h.ctl(&["verify"]);
    assert_eq!(v.code, 0, "{}{}", v.stdout, v.stderr);
}

#[test]
fn downgrade_needs_allow_downgrade() {
    let h = TestHost::new();
    let new = h.bundle("2.0", 5, &Tree::demo("new"));
    let old = h.bundle("1.0", 4, &Tree::demo("old"));
    h.activate_ok(&new);
    let before = h.snapshot();
    let out = h.ctl(&["activate", old.to_str().unwrap(), "--no-service"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("--allow-downgrade"), "{}", out.stderr);
    assert_eq!(h.snapshot(), before);
    // With --json the reason also arrives on stdout, for scripts (the Ansible role).
    let out = h.ctl(&["activate", old.to_str().unwrap(), "--no-service", "--json"]);
    assert_eq!(out.code, 2);
    let v = out.json();
    assert_eq!(v["exit_code"], 2);
    assert!(
        v["error"].as_str().unwrap().contains("--allow-downgrade"),
        "{v}"
    );
    let out = h.ctl(&[
        "activate",
        old.to_str().unwrap(),
        "--no-service",
        "--allow-downgrade",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(h.current(), Some(h.id_of(&old)));
}

#[test]
fn activating_the_release_a_rollback_returned_to_changes_nothing() {
    // A fleet re-running its playbook after a rollback: the older release is current, so this is
    // a no-op, not a downgrade.
    let h = TestHost::new();
    let old = h.bundle("1.0", 1, &Tree::demo("old"));
    let new = h.bundle("2.0", 2, &Tree::demo("new"));
    h.activate_ok(&old);
    h.activate_ok(&new);
    assert_eq!(h.ctl(&["rollback", "--no-service"]).code, 0);
    let before = h.snapshot();
    let out = h.ctl(&["activate", old.to_str().unwrap(), "--no-service", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["changed"], false);
    assert_eq!(h.snapshot(), before);
    // Any other older release still needs --allow-downgrade.
    let older = h.bundle("0.9", 0, &Tree::demo("older"));
    assert_eq!(
        h.ctl(&["activate", older.to_str().unwrap(), "--no-service"])
            .code,
        2
    );
}

#[test]
fn wrong_target_and_untrusted_key_are_refused() {
    let h = TestHost::new();
    let good = h.bundle("1.0", 1, &Tree::demo("a"));
    h.activate_ok(&good);
    let before = h.snapshot();
    let other = h.bundle_with_key(
        "x",
        2,
        &Tree::demo("x"),
        &h.key,
        "linux-aarch64-cu130-sm_121",
    );
    let out = h.ctl(&["activate", other.to_str().unwrap(), "--no-service"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("built for linux-aarch64-cu130-sm_121"),
        "{}",
        out.stderr
    );
    let foreign = h.bundle_with_key("y", 3, &Tree::demo("y"), &keys::generate(), TARGET);
    let out = h.ctl(&["activate", foreign.to_str().unwrap(), "--no-service"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("not in the trusted key set"),
        "{}",
        out.stderr
    );
    // A revoked key is refused even though it is still installed as trusted.
    fs_err::create_dir_all(h.root.join("etc/comfyui/keys/revoked")).unwrap();
    fs_err::write(
        h.root.join("etc/comfyui/keys/revoked/release.pub"),
        h.key.public().to_file_string(),
    )
    .unwrap();
    let newer = h.bundle("1.1", 4, &Tree::demo("z"));
    let out = h.ctl(&["activate", newer.to_str().unwrap(), "--no-service"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("revoked"), "{}", out.stderr);
    assert_eq!(h.snapshot(), before);
}

#[test]
fn every_hostile_bundle_leaves_the_host_as_it_was() {
    let h = TestHost::new();
    let good = h.bundle("1.0", 1, &Tree::demo("a"));
    h.activate_ok(&good);
    let before = h.snapshot();
    let store_before = h.ctl(&["status", "--json"]).json()["store_objects"].clone();
    let dir = h.tmp.path().join("hostile");
    fs_err::create_dir(&dir).unwrap();
    let cases = bundle::testing::hostile_bundles(&dir, &h.key, TARGET).unwrap();
    assert!(cases.len() >= 15);
    let trusted = keys::TrustedKeys::new(vec![h.key.public()], vec![]);
    for (name, path) in cases {
        // The reason the format's reader gives for this very file (bundle/tests/hostile.rs pins
        // each one): the activation must refuse with it, not with any exit-2 error.
        let reason = match bundle::Bundle::open(&path, &trusted) {
            Err(e) => e.to_string(),
            Ok(b) => b
                .verify_payload(1, &|_| {})
                .expect_err(&format!("{name} passes the reader"))
                .to_string(),
        };
        let out = h.ctl(&["activate", path.to_str().unwrap(), "--no-service"]);
        assert_eq!(out.code, 2, "{name}: exit {} {}", out.code, out.stderr);
        assert!(out.stderr.starts_with("error: "), "{name}: {}", out.stderr);
        assert!(
            out.stderr.contains(&reason),
            "{name}: refused with\n{}\nnot with the reader's reason\n{reason}",
            out.stderr
        );
        assert_eq!(h.snapshot(), before, "{name} changed the host");
        assert!(
            !h.root.join("etc/evil").exists() && !h.tmp.path().join("escape").exists(),
            "{name} escaped"
        );
    }
    assert_eq!(
        h.ctl(&["status", "--json"]).json()["store_objects"],
        store_before
    );
    assert_eq!(h.ctl(&["verify"]).code, 0);
}

#[test]
fn failed_preflight_never_becomes_current() {
    let h = TestHost::new();
    let good = h.bundle("1.0", 1, &Tree::demo("a"));
    h.activate_ok(&good);
    let mut tree = Tree::demo("broken");
    tree.preflight = vec![
        ("imports", "ok"),
        (
            "torch cuda",
            "import torch; assert torch.version.cuda == '13.0'",
        ),
    ];
    let bad = h.bundle("1.1", 2, &tree);
    let out = h.ctl(&["activate", bad.to_str().unwrap(), "--no-service"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("pre-flight check \"torch cuda\" failed"),
        "{}",
        out.stderr
    );
    assert_eq!(h.current(), Some(h.id_of(&good)));
    let rows = h.ctl(&["releases", "--json"]).json()["items"].clone();
    assert!(rows
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["id"] == h.id_of(&bad).as_str() && r["status"] == "failed"));
}

#[test]
fn a_release_needing_a_library_the_host_lacks_never_becomes_current() {
    let h = TestHost::new();
    let mut tree = Tree::demo("a");
    // libc is on every host; the driver's library only counts for a GPU release.
    tree.host_libs = vec!["libc.so.6", "libnvidia-comfyctl-test.so.1"];
    let good = h.bundle("1.0", 1, &tree);
    h.activate_ok(&good);
    let doc = h.ctl(&["doctor", "--json"]).json();
    let line = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "host libraries")
        .unwrap()
        .clone();
    assert_eq!(line["status"], "ok", "{line}");
    assert!(
        line["saw"]
            .as_str()
            .unwrap()
            .contains("1 of 2 found by the dynamic loader; not here: libnvidia-comfyctl-test.so.1"),
        "{line}"
    );
    let mut tree = Tree::demo("b");
    tree.host_libs = vec!["libc.so.6", "libcomfyctl-test-absent.so.3"];
    let bad = h.bundle("1.1", 2, &tree);
    let out = h.ctl(&["activate", bad.to_str().unwrap(), "--no-service"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "pre-flight: the host lacks 1 shared library the release needs: libcomfyctl-test-absent.so.3"
        ),
        "{}",
        out.stderr
    );
    assert_eq!(h.current(), Some(h.id_of(&good)));
    let mut tree = Tree::demo("c");
    tree.device_type = "cuda";
    tree.host_libs = vec!["libnvidia-comfyctl-test.so.1"];
    let gpu = h.bundle("1.2", 3, &tree);
    let out = h.ctl(&["activate", gpu.to_str().unwrap(), "--no-service"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("needs the NVIDIA driver's libnvidia-comfyctl-test.so.1"),
        "{}",
        out.stderr
    );
    assert_eq!(h.current(), Some(h.id_of(&good)));
}

#[test]
fn a_dry_run_and_a_diff_say_what_changes_and_change_nothing() {
    let h = TestHost::new();
    let one = h.bundle("1.0", 1, &Tree::demo("a"));
    h.activate_ok(&one);
    let mut tree = Tree::demo("b");
    tree.expected_nodes = vec![("node_a", vec!["NodeA", "NodeB"])];
    tree.files
        .push(("ComfyUI/new.py".into(), b"new = 1\n".to_vec()));
    let two = h.bundle("1.1", 2, &tree);
    let before = h.snapshot();
    let plan = h.ctl(&[
        "activate",
        two.to_str().unwrap(),
        "--dry-run",
        "--no-service",
        "--json",
    ]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    let p = plan.json();
    assert_eq!(p["action"], "activate");
    // main.py changed, new.py added; the rest comes from the store.
    assert_eq!(p["files_to_write"], 2, "{p}");
    assert_eq!(
        p["bytes_to_write"],
        "print('b')\n".len() + "new = 1\n".len()
    );
    assert_eq!(p["diff"]["files"]["changed"], 1);
    assert_eq!(p["diff"]["files"]["added"], 1);
    assert_eq!(
        p["diff"]["classes"]["node_a"]["added"],
        serde_json::json!(["NodeB"])
    );
    let text = h.ctl(&[
        "activate",
        two.to_str().unwrap(),
        "--dry-run",
        "--no-service",
    ]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    for want in [
        "an activation would write 2 files (19 B) and reuse 43 files (2.6 MB) from the store",
        "node classes:\n  node_a: 1 added, 0 removed\n    + NodeB\n",
        "files: 1 changed, 1 added, 0 removed",
        "nothing was changed",
    ] {
        assert!(
            text.stdout.contains(want),
            "{want:?} not in:\n{}",
            text.stdout
        );
    }
    assert_eq!(h.snapshot(), before, "a dry run changes nothing");
    // What an activation refuses, the dry run refuses the same way, still changing nothing.
    let mut bad = Tree::demo("c");
    bad.host_libs = vec!["libcomfyctl-test-absent.so.3"];
    let lacking = h.bundle("1.2", 3, &bad);
    let out = h.ctl(&[
        "activate",
        lacking.to_str().unwrap(),
        "--dry-run",
        "--no-service",
    ]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("pre-flight would fail: the host lacks 1 shared library"),
        "{}",
        out.stderr
    );
    let other = keys::generate();
    let foreign = h.bundle_with_key("1.3", 4, &Tree::demo("d"), &other, common::TARGET);
    let out = h.ctl(&["activate", foreign.to_str().unwrap(), "--dry-run"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(h.snapshot(), before);

    h.activate_ok(&two);
    let old = h.bundle("0.9", 0, &Tree::demo("z"));
    let out = h.ctl(&[
        "activate",
        old.to_str().unwrap(),
        "--dry-run",
        "--no-service",
    ]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("below the highest this host has seen"),
        "{}",
        out.stderr
    );
    // Re-planning the current release: nothing to do.
    let p = h
        .ctl(&[
            "activate",
            two.to_str().unwrap(),
            "--dry-run",
            "--no-service",
            "--json",
        ])
        .json();
    assert_eq!(p["action"], "none");
    // `diff` alone: what the last activation changed (from the rollback target to current);
    // `--from` and an installed id work the same way.
    let d = h.ctl(&["diff", "--json"]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    let d = d.json();
    assert_eq!(d["old"]["id"], h.id_of(&one).as_str());
    assert_eq!(d["new"]["id"], h.id_of(&two).as_str());
    assert_eq!(
        d["classes"]["node_a"]["added"],
        serde_json::json!(["NodeB"])
    );
    let back = h.ctl(&["diff", &h.id_of(&one)[..12], "--json"]).json();
    assert_eq!(
        back["classes"]["node_a"]["removed"],
        serde_json::json!(["NodeB"])
    );
    assert_eq!(back["files"]["removed"], 1);
    let same = h.ctl(&["diff", two.to_str().unwrap()]);
    assert!(
        same.stdout.contains("the same bundle: nothing differs"),
        "{}",
        same.stdout
    );
    let out = h.ctl(&["diff", "nonexistent"]);
    assert_eq!(out.code, 2, "a source that is none: refused");
    assert!(
        out.stderr
            .contains("neither a bundle file, a URL nor an installed release"),
        "{}",
        out.stderr
    );
}

/// `setup` on a `--root` tree never creates this machine's users or groups: it says what it would
/// have run.
#[test]
fn setup_on_a_host_tree_never_touches_this_machines_accounts() {
    let h = TestHost::new();
    let cfg = h.root.join("etc/comfyui/comfyctl.toml");
    let text = fs_err::read_to_string(&cfg).unwrap();
    fs_err::write(
        &cfg,
        format!("{text}[access]\ngroup = \"comfyctl-test-no-such-group\"\n"),
    )
    .unwrap();
    let before = fs_err::read_to_string("/etc/group").unwrap();
    let out = h.ctl(&["setup"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(
            "not running `groupadd --system comfyctl-test-no-such-group`: the host tree is"
        ),
        "{}",
        out.stderr
    );
    assert_eq!(fs_err::read_to_string("/etc/group").unwrap(), before);
}

/// Under `--root` the tree's own `etc/passwd` and `etc/group` name the accounts: an account only
/// this machine has is unknown there, and one only the tree has is used, with the tree's ids.
#[test]
fn a_host_tree_knows_its_own_accounts_not_this_machines() {
    // `daemon` exists on this machine (uid 1), not in the tree: setup must try to create it.
    let h = TestHost::new();
    h.config_tail("[service]\nuser = \"daemon\"\ngroup = \"root\"\n[access]\ngroup = \"root\"");
    assert!(fs_err::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("daemon:")));
    let out = h.ctl(&["setup"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("not running `useradd") && out.stderr.contains(" daemon`"),
        "{}",
        out.stderr
    );
    // The tree's own service account (ids this machine does not use) is found, and what setup
    // makes for the service is the tree's uid's.
    let h = TestHost::new();
    fs_err::write(
        h.root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\ncomfy-tree:x:64999:64999::/:/usr/sbin/nologin\n",
    )
    .unwrap();
    fs_err::write(h.root.join("etc/group"), "root:x:0:\ncomfy-tree:x:64999:\n").unwrap();
    h.config_tail(
        "[service]\nuser = \"comfy-tree\"\ngroup = \"comfy-tree\"\ncheck_user = \"root\"\n[access]\ngroup = \"root\"",
    );
    let out = h.ctl(&["setup"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    if rustix::process::getuid().is_root() {
        use std::os::unix::fs::MetadataExt as _;
        let user = fs_err::metadata(h.install().join("data/user")).unwrap();
        assert_eq!((user.uid(), user.gid()), (64999, 64999));
    }
}

#[test]
fn verify_finds_tampering() {
    let h = TestHost::new();
    let a = h.bundle("1.0", 1, &Tree::demo("a"));
    h.activate_ok(&a);
    let f = h.install().join("current/ComfyUI/main.py");
    fs_err::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    fs_err::write(&f, "print('owned')\n").unwrap();
    fs_err::set_permissions(&f, std::fs::Permissions::from_mode(0o444)).unwrap();
    let out = h.ctl(&["verify"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stdout.contains("ComfyUI/main.py: size")
            || out.stdout.contains("ComfyUI/main.py: content"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_root_edit_of_a_shared_file_is_never_reused_or_rolled_back_to() {
    let h = TestHost::new();
    let a = h.bundle("1.0", 1, &Tree::demo("a"));
    let b = h.bundle("1.1", 2, &Tree::demo("b"));
    h.activate_ok(&a);
    h.activate_ok(&b);
    // A root hot-fix in place: one file of the current release, shared by every release (and by
    // the rollback target) through the store.
    let f = h.install().join("current/venv/lib/site.py");
    let original = fs_err::read(&f).unwrap();
    fs_err::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut w = fs_err::OpenOptions::new().append(true).open(&f).unwrap();
    std::io::Write::write_all(&mut w, b"import os; os.system('planted')\n").unwrap();
    drop(w);
    fs_err::set_permissions(&f, std::fs::Permissions::from_mode(0o444)).unwrap();
    // The rollback target shares the changed file: refused, by name, with the way out.
    let out = h.ctl(&["rollback", "--no-service"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("venv/lib/site.py")
            && out.stderr.contains("changed since it was installed"),
        "{}",
        out.stderr
    );
    assert_eq!(h.current(), Some(h.id_of(&b)));
    // The next release that needs those bytes gets them from its bundle, not from the store.
    let c = h.bundle("1.2", 3, &Tree::demo("c"));
    let out = h.ctl(&["activate", c.to_str().unwrap(), "--no-service", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    assert_eq!(r["quarantined_objects"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(
        fs_err::read(h.install().join("current/venv/lib/site.py")).unwrap(),
        original
    );
    assert_eq!(h.ctl(&["verify"]).code, 0);
    assert!(
        h.install()
            .join("store/.quarantine")
            .read_dir()
            .unwrap()
            .count()
            == 1
    );
    // Release a, once rolled back to, would have run the planted line: activating its bundle
    // again restores it (its changed file is unpacked afresh), and then it can be returned to.
    assert_eq!(
        h.ctl(&[
            "activate",
            a.to_str().unwrap(),
            "--no-service",
            "--allow-downgrade"
        ])
        .code,
        0
    );
    assert_eq!(h.ctl(&["verify", &h.id_of(&a)]).code, 0);
}

#[test]
fn names_with_control_characters_are_printed_escaped() {
    let h = TestHost::new();
    let mut t = Tree::demo("a");
    let evil = "ComfyUI/\u{1b}]0;pwned\u{7}.py";
    t.files.push((evil.to_owned(), b"x = 1\n".to_vec()));
    let a = h.bundle("1.0", 1, &t);
    h.activate_ok(&a);
    let f = h.install().join("current").join(evil);
    fs_err::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    fs_err::write(&f, "x = 2\n").unwrap();
    let out = h.ctl(&["verify"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(!out.stdout.contains('\u{1b}'), "{:?}", out.stdout);
    assert!(
        out.stdout.contains("ComfyUI/\\u{1b}]0;pwned\\u{7}.py"),
        "{:?}",
        out.stdout
    );
}

#[test]
fn gc_keeps_current_previous_and_good_ones_and_sweeps_the_store() {
    let h = TestHost::new();
    let mut ids = Vec::new();
    for i in 0..4u64 {
        let mut t = Tree::demo(&format!("r{i}"));
        t.files.push((
            format!("venv/lib/only{i}.py"),
            vec![b'x'; 1000 + i as usize],
        ));
        let b = h.bundle(&format!("1.{i}"), i + 1, &t);
        ids.push(h.id_of(&b));
        h.activate_ok(&b);
    }
    // A failed release does not push good ones out.
    let mut t = Tree::demo("bad");
    t.preflight = vec![("x", "fail")];
    let bad = h.bundle("2.0", 9, &t);
    assert_eq!(
        h.ctl(&["activate", bad.to_str().unwrap(), "--no-service"])
            .code,
        1
    );
    let out = h.ctl(&["gc", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rows = h.ctl(&["releases", "--json"]).json()["items"].clone();
    let left: Vec<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    // keep = 2: the newest two good ones (current r3 and r2, which is also the rollback target).
    assert!(left.contains(&ids[3]) && left.contains(&ids[2]), "{left:?}");
    assert!(
        !left.contains(&ids[0]) && !left.contains(&h.id_of(&bad)),
        "{left:?}"
    );
    // only0.py belonged to a removed release alone: its object is gone; the shared blobs stay.
    let status = h.ctl(&["status", "--json"]).json();
    let objects = status["store_objects"].as_u64().unwrap();
    // Exactly one object per distinct file content of the releases left, computed from their trees
    // (the store holds what releases share once; gc dropped what only removed releases held).
    fn contents(dir: &std::path::Path, out: &mut std::collections::BTreeSet<Vec<u8>>) {
        for e in fs_err::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() && e.file_name() == ".bundle" {
                // The release's signed manifest and signature: kept beside, not in the store.
            } else if t.is_dir() {
                contents(&e.path(), out);
            } else if t.is_file() {
                out.insert(fs_err::read(e.path()).unwrap());
            }
        }
    }
    let mut distinct = std::collections::BTreeSet::new();
    for id in &left {
        contents(&h.install().join("releases").join(id), &mut distinct);
    }
    assert!(distinct.len() > 10, "{distinct:?}");
    assert_eq!(objects, distinct.len() as u64, "{status}");
    assert_eq!(h.ctl(&["rollback", "--no-service"]).code, 0);
    assert_eq!(h.current().as_deref(), Some(ids[2].as_str()));
}

#[test]
fn missing_config_says_what_to_write() {
    let tmp = tempfile::tempdir().unwrap();
    let out: Out = std::process::Command::new(env!("CARGO_BIN_EXE_comfyctl"))
        .arg("--root")
        .arg(tmp.path())
        .arg("status")
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("target = "), "{}", out.stderr);
}

#[test]
#[cfg_attr(
    not(feature = "host-privileged"),
    ignore = "needs root (unshare, setpriv); scripts/test.sh runs it"
)]
fn preflight_runs_confined_as_neither_root_nor_the_service() {
    let h = TestHost::new();
    // Not root, not the service user (`comfyui`, where it exists: its processes could kill the
    // check), no new privileges, no capabilities, a /var/tmp of its own, nothing of the caller's
    // environment, `/` as its working directory.
    let mark = format!("/var/tmp/comfyctl-preflight-{}", std::process::id());
    let code = format!(
        "sh:[ \"$(id -u)\" -ne 0 ] && [ \"$(id -un)\" != comfyui ] && grep -q '^NoNewPrivs:.*1' /proc/self/status \
         && grep -q '^CapEff:.*0000000000000000' /proc/self/status && [ -z \"$CALLER_SECRET\" ] && [ \"$(pwd)\" = / ] \
         && [ -z \"$(id -G | tr ' ' '\\n' | grep -vx \"$(id -g)\")\" ] && touch {mark} && [ -f {mark} ]"
    );
    let mut t = Tree::demo("a");
    t.preflight = vec![("confined", Box::leak(code.into_boxed_str()))];
    let a = h.bundle("1.0", 1, &t);
    let out: Out = h
        .command(&["activate", a.to_str().unwrap(), "--no-service"])
        .env("CALLER_SECRET", "x")
        .current_dir(h.tmp.path())
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        !std::path::Path::new(&mark).exists(),
        "the check's /var/tmp was the host's"
    );
    // A check that writes outside the release (here: into the host's tree) cannot.
    let planted = h.root.join("planted");
    let code = format!("sh:touch {}", planted.display());
    let mut t = Tree::demo("b");
    t.preflight = vec![("plant", Box::leak(code.into_boxed_str()))];
    let b = h.bundle("1.1", 2, &t);
    let out = h.ctl(&["activate", b.to_str().unwrap(), "--no-service"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("Permission denied"), "{}", out.stderr);
    assert!(!planted.exists());
    assert_eq!(h.current(), Some(h.id_of(&a)));
}

#[test]
fn a_host_tree_given_with_root_never_drives_this_machines_systemd() {
    let h = TestHost::new();
    // A systemctl first on PATH that records any call.
    let bin = h.tmp.path().join("bin");
    fs_err::create_dir_all(&bin).unwrap();
    let marker = h.tmp.path().join("systemctl-was-called");
    fs_err::write(
        bin.join("systemctl"),
        format!("#!/bin/sh\necho \"$@\" >> {}\n", marker.display()),
    )
    .unwrap();
    fs_err::set_permissions(
        bin.join("systemctl"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    // A service user this machine has, so everything before the unit is prepared.
    h.config_tail("[service]\nuser = \"root\"\ngroup = \"root\"");
    let a = h.bundle("1.0", 1, &Tree::demo("a"));
    // With the service: everything is prepared, and the unit is never touched.
    let out: Out = h
        .command(&["activate", a.to_str().unwrap()])
        .env("PATH", &path)
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("not running `systemctl"),
        "{}",
        out.stderr
    );
    for args in [
        &["service", "restart"][..],
        &["service", "remove"],
        &["doctor"],
    ] {
        let _ = h.command(args).env("PATH", &path).output().unwrap();
    }
    assert!(
        !marker.exists(),
        "systemctl was called: {:?}",
        fs_err::read_to_string(&marker)
    );
}
