//! `comfyctl doctor` on a `--root` host tree: it runs to the end, reports the driver as
//! `nvidia-smi` answers (a stand-in on PATH, so the result is the same on a machine with a GPU),
//! and each planted fault as its own failure.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt as _;

/// Runs doctor with `nvidia-smi` replaced by a script (`smi`: its body), ahead of the real one.
fn doctor_with(h: &TestHost, smi: &str) -> (i32, serde_json::Value) {
    let bin = h.tmp.path().join("fake-bin");
    fs_err::create_dir_all(&bin).unwrap();
    let f = bin.join("nvidia-smi");
    fs_err::write(&f, format!("#!/bin/sh\n{smi}\n")).unwrap();
    fs_err::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out: Out = h
        .command(&["doctor", "--json"])
        .env("PATH", path)
        .output()
        .unwrap()
        .into();
    (out.code, out.json())
}

/// Doctor on a host whose driver does not answer.
fn doctor(h: &TestHost) -> (i32, serde_json::Value) {
    doctor_with(h, "echo 'NVIDIA-SMI has failed' >&2; exit 9")
}

fn status<'a>(v: &'a serde_json::Value, name: &str) -> (&'a str, String) {
    let c = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {v}"));
    (
        c["status"].as_str().unwrap(),
        format!("{} {}", c["saw"], c["fix"]),
    )
}

#[test]
fn host_doctor_reports_each_fault() {
    let h = TestHost::new();
    let nfs = h.tmp.path().join("nfs-models");
    fs_err::create_dir(&nfs).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    fs_err::write(
        h.root.join("etc/comfyui/comfyctl.toml"),
        format!("target = \"{TARGET}\"\n[service]\nuser = \"root\"\ngroup = \"root\"\nport = {port}\n[access]\ngroup = \"root\"\n[data]\nmodels = \"{}\"\n", nfs.display()),
    )
    .unwrap();
    let a = h.bundle("1.0", 1, &Tree::demo("a"));
    h.activate_ok(&a);
    assert_eq!(h.ctl(&["setup"]).code, 0);

    let (code, v) = doctor(&h);
    assert_eq!(code, 1, "the driver does not answer: {v}");
    let (st, text) = status(&v, "NVIDIA driver");
    assert_eq!(st, "fail");
    assert!(text.contains("install the NVIDIA driver"), "{text}");
    // A driver that answers: its GPUs are listed.
    let (_, v) = doctor_with(&h, "echo '0, NVIDIA GB10, 12.1, 580.95.05'");
    let (st, text) = status(&v, "NVIDIA driver");
    assert_eq!(st, "ok", "{v}");
    assert!(
        text.contains("1 GPU(s): 0, NVIDIA GB10, 12.1, 580.95.05"),
        "{text}"
    );
    for ok in [
        "current release",
        "data/models",
        "trusted keys",
        "port",
        "pre-flight",
    ] {
        assert_eq!(status(&v, ok).0, "ok", "{ok}: {v}");
    }

    // A port taken by another process.
    let squatter = std::net::TcpListener::bind(("0.0.0.0", port)).unwrap();
    let (_, v) = doctor(&h);
    let (st, text) = status(&v, "port");
    assert_eq!(st, "fail");
    assert!(text.contains("taken by another process"), "{text}");
    drop(squatter);

    // The NFS link replaced by a directory (what the seed's forced git pull did).
    let link = h.install().join("data/models");
    fs_err::remove_file(&link).unwrap();
    fs_err::create_dir(&link).unwrap();
    fs_err::write(link.join("stray.safetensors"), "x").unwrap();
    let (_, v) = doctor(&h);
    let (st, text) = status(&v, "data/models");
    assert_eq!(st, "fail");
    assert!(text.contains("is a directory, not the link"), "{text}");
    fs_err::remove_dir_all(&link).unwrap();
    std::os::unix::fs::symlink(&nfs, &link).unwrap();

    // The NFS target missing.
    fs_err::remove_dir(&nfs).unwrap();
    let (_, v) = doctor(&h);
    let (st, text) = status(&v, "data/models");
    assert_eq!(st, "fail");
    assert!(text.contains("is missing"), "{text}");
    fs_err::create_dir(&nfs).unwrap();

    // A tampered release file.
    let f = h.install().join("current/ComfyUI/main.py");
    fs_err::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    fs_err::write(&f, "print('evil')\n").unwrap();
    let (_, v) = doctor(&h);
    let (st, text) = status(&v, "current release");
    assert_eq!(st, "fail");
    assert!(text.contains("ComfyUI/main.py"), "{text}");
}
