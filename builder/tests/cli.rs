//! The bundle verbs through the real binary, and interop with stock tar, zstd and minisign.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

fn comfy_build(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_comfy-build"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn tool(cmd: &str, args: &[&str], cwd: &Path) -> (i32, String) {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} must be installed (.ci/run installs it): {e}"));
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn make_tree(root: &Path) {
    fs_err::create_dir_all(root.join("ComfyUI/custom_nodes/n")).unwrap();
    fs_err::create_dir_all(root.join("venv/bin")).unwrap();
    fs_err::write(root.join("ComfyUI/main.py"), "print('hi')\n").unwrap();
    fs_err::write(
        root.join("ComfyUI/custom_nodes/n/__init__.py"),
        "NODE_CLASS_MAPPINGS = {}\n",
    )
    .unwrap();
    fs_err::write(root.join("venv/bin/tool"), "#!/bin/sh\necho tool\n").unwrap();
    fs_err::set_permissions(
        root.join("venv/bin/tool"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("tool", root.join("venv/bin/alias")).unwrap();
    let long = format!("ComfyUI/{}", "z".repeat(150));
    fs_err::write(root.join(long), vec![42u8; 100_000]).unwrap();
}

/// `comfy-build pack tree` into `out` as release `demo 1`; the key comes from the caller.
const PACK: [&str; 10] = [
    "pack",
    "tree",
    "--name",
    "demo",
    "--version",
    "1",
    "--sequence",
    "1",
    "--target",
    "linux-x86_64-cpu",
];

fn pack(dir: &Path, key: &str, out: &str) {
    let mut args = PACK.to_vec();
    args.extend(["--key", key, "--out", out]);
    let (code, _, err) = comfy_build(&args, dir);
    assert_eq!(code, 0, "{err}");
}

fn diff_trees(a: &Path, b: &Path) {
    let out = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn keygen_pack_verify_inspect() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_tree(&d.join("tree"));
    let (code, out, _) = comfy_build(&["keygen", "--out", "rel"], d);
    assert_eq!(code, 0);
    assert!(out.contains("rel.pub"));
    assert_eq!(
        fs_err::metadata(d.join("rel.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let (code, _, err) = comfy_build(&["keygen", "--out", "rel"], d);
    assert_eq!(code, 2, "keygen must refuse to overwrite: {err}");
    pack(d, "rel.key", "demo.bundle");
    let (code, out, err) = comfy_build(&["verify", "demo.bundle", "--key", "rel.pub"], d);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ok: demo 1 "), "{out}");
    let (code, out, _) = comfy_build(&["inspect", "demo.bundle", "--json"], d);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for k in [
        "id",
        "name",
        "version",
        "sequence",
        "target",
        "files",
        "bytes",
        "provenance",
    ] {
        assert!(v.get(k).is_some(), "inspect --json lacks {k}: {out}");
    }
    assert_eq!(v["name"], "demo");
    assert_eq!(v["files"], 4);
    assert_eq!(v["bytes"], 100_000 + 12 + 25 + 20);
}

#[test]
fn refusals_exit_2_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_tree(&d.join("tree"));
    comfy_build(&["keygen", "--out", "a"], d);
    comfy_build(&["keygen", "--out", "b"], d);
    pack(d, "a.key", "demo.bundle");
    let (code, _, err) = comfy_build(&["verify", "demo.bundle", "--key", "b.pub"], d);
    assert_eq!(code, 2);
    assert!(err.contains("not in the trusted key set"), "{err}");
    let mut bytes = fs_err::read(d.join("demo.bundle")).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    fs_err::write(d.join("bad.bundle"), &bytes).unwrap();
    let (code, _, err) = comfy_build(&["verify", "bad.bundle", "--key", "a.pub"], d);
    assert_eq!(code, 2, "{err}");
    fs_err::set_permissions(d.join("a.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = comfy_build(
        &[
            "pack",
            "tree",
            "--name",
            "x",
            "--version",
            "1",
            "--sequence",
            "1",
            "--target",
            "t",
            "--key",
            "a.key",
            "--out",
            "x.bundle",
        ],
        d,
    );
    assert_eq!(code, 2);
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!d.join("x.bundle").exists());
}

#[test]
fn stock_tar_and_zstd_read_the_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_tree(&d.join("tree"));
    comfy_build(&["keygen", "--out", "k"], d);
    pack(d, "k.key", "demo.bundle");
    let (code, out) = tool("zstd", &["-t", "demo.bundle"], d);
    assert_eq!(code, 0, "{out}");
    fs_err::create_dir(d.join("x")).unwrap();
    let (code, out) = tool("tar", &["--zstd", "-xf", "demo.bundle", "-C", "x"], d);
    assert_eq!(code, 0, "{out}");
    let (code, listing) = tool("tar", &["--zstd", "-tf", "demo.bundle"], d);
    assert_eq!(code, 0);
    let first: Vec<&str> = listing.lines().take(2).collect();
    assert_eq!(
        first,
        [".bundle/manifest.toml", ".bundle/manifest.toml.minisig"]
    );
    fs_err::remove_dir_all(d.join("x/.bundle")).unwrap();
    diff_trees(&d.join("tree"), &d.join("x"));
}

#[test]
fn stock_minisign_verifies_our_signature() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_tree(&d.join("tree"));
    comfy_build(&["keygen", "--out", "k"], d);
    pack(d, "k.key", "demo.bundle");
    tool("tar", &["--zstd", "-xf", "demo.bundle", ".bundle"], d);
    let (code, out) = tool(
        "minisign",
        &["-Vm", ".bundle/manifest.toml", "-p", "k.pub"],
        d,
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Trusted comment: comfyui-bundle name=demo version=1 sequence=1"),
        "{out}"
    );
    // Stock minisign also signs with a key comfy-build made.
    let (code, out) = tool(
        "minisign",
        &["-S", "-s", "k.key", "-m", "tree/ComfyUI/main.py"],
        d,
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = tool(
        "minisign",
        &["-Vm", "tree/ComfyUI/main.py", "-p", "k.pub"],
        d,
    );
    assert_eq!(code, 0, "{out}");
    // And rejects a tampered manifest.
    let mut m = fs_err::read(d.join(".bundle/manifest.toml")).unwrap();
    m[0] ^= 1;
    fs_err::write(d.join(".bundle/manifest.toml"), m).unwrap();
    let (code, _) = tool(
        "minisign",
        &["-Vm", ".bundle/manifest.toml", "-p", "k.pub"],
        d,
    );
    assert_ne!(code, 0);
}

#[test]
fn minisign_generated_keys_sign_and_verify_with_us() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_tree(&d.join("tree"));
    let (code, out) = tool("minisign", &["-G", "-W", "-p", "ms.pub", "-s", "ms.key"], d);
    assert_eq!(code, 0, "{out}");
    fs_err::set_permissions(d.join("ms.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    pack(d, "ms.key", "demo.bundle");
    let (code, _, err) = comfy_build(&["verify", "demo.bundle", "--key", "ms.pub"], d);
    assert_eq!(code, 0, "{err}");
    tool("tar", &["--zstd", "-xf", "demo.bundle", ".bundle"], d);
    let (code, out) = tool(
        "minisign",
        &["-Vm", ".bundle/manifest.toml", "-p", "ms.pub"],
        d,
    );
    assert_eq!(code, 0, "{out}");
    // minisign -H insists on the prehashed algorithm: our signatures are prehashed.
    let (code, out) = tool(
        "minisign",
        &["-H", "-Vm", ".bundle/manifest.toml", "-p", "ms.pub"],
        d,
    );
    assert_eq!(code, 0, "{out}");
}

#[test]
fn keys_directory_with_revocation() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_tree(&d.join("tree"));
    comfy_build(&["keygen", "--out", "k"], d);
    pack(d, "k.key", "demo.bundle");
    fs_err::create_dir_all(d.join("keys/revoked")).unwrap();
    fs_err::copy(d.join("k.pub"), d.join("keys/k.pub")).unwrap();
    let (code, _, err) = comfy_build(&["verify", "demo.bundle", "--keys", "keys"], d);
    assert_eq!(code, 0, "{err}");
    fs_err::copy(d.join("k.pub"), d.join("keys/revoked/k.pub")).unwrap();
    let (code, _, err) = comfy_build(&["verify", "demo.bundle", "--keys", "keys"], d);
    assert_eq!(code, 2);
    assert!(err.contains("revoked"), "{err}");
}

#[test]
fn diff_of_two_bundles_and_of_an_unpacked_release() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_tree(&d.join("tree"));
    comfy_build(&["keygen", "--out", "rel"], d);
    pack(d, "rel.key", "one.bundle");
    fs_err::write(d.join("tree/ComfyUI/main.py"), "print('hello')\n").unwrap();
    fs_err::write(d.join("tree/ComfyUI/extra.py"), "x = 1\n").unwrap();
    fs_err::remove_file(d.join("tree/venv/bin/alias")).unwrap();
    pack(d, "rel.key", "two.bundle");
    let (code, out, err) = comfy_build(&["diff", "one.bundle", "two.bundle", "--json"], d);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let f = &v["files"];
    assert_eq!(
        (&f["changed"], &f["added"], &f["removed"]),
        (&1.into(), &1.into(), &1.into()),
        "{f}"
    );
    assert_eq!(
        f["new_content_bytes"],
        "print('hello')\n".len() + "x = 1\n".len()
    );
    // An unpacked release (stock tar) compares the same as its bundle.
    let x = d.join("x");
    fs_err::create_dir_all(&x).unwrap();
    let st = std::process::Command::new("tar")
        .args(["--zstd", "-xf", "one.bundle", "-C", "x"])
        .current_dir(d)
        .status()
        .unwrap();
    assert!(st.success());
    let (code, text, err) = comfy_build(&["diff", "x", "two.bundle"], d);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("files: 1 changed, 1 added, 1 removed, 8 unchanged; 21 B of new content"),
        "{text}"
    );
    let (code, _, err) = comfy_build(&["diff", "tree", "two.bundle"], d);
    assert_eq!(code, 1);
    assert!(err.contains("is not an unpacked release"), "{err}");
}

/// CI signs with the key in `COMFY_SIGNING_KEY` (a secret's contents), never a file: it works, a
/// malformed value and a missing key are refused, each saying what to do.
#[test]
fn the_signing_key_can_come_from_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_tree(&d.join("tree"));
    comfy_build(&["keygen", "--out", "rel"], d);
    let pack = |env: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_comfy-build"));
        c.args(PACK)
            .args(["--out", "env.bundle"])
            .current_dir(d)
            .env_remove("COMFY_SIGNING_KEY");
        if let Some(v) = env {
            c.env("COMFY_SIGNING_KEY", v);
        }
        let out = c.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let key = fs_err::read_to_string(d.join("rel.key")).unwrap();
    let (code, err) = pack(Some(&key));
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = comfy_build(&["verify", "env.bundle", "--key", "rel.pub"], d);
    assert_eq!(code, 0, "{out}{err}");
    let (code, err) = pack(Some("not a key"));
    assert_eq!(code, 2, "a key that is none: refused");
    assert!(
        err.contains("reading the secret key from COMFY_SIGNING_KEY"),
        "{err}"
    );
    let (code, err) = pack(None);
    assert_eq!(code, 1);
    assert!(
        err.contains("no signing key: pass --key FILE or set COMFY_SIGNING_KEY"),
        "{err}"
    );
}
