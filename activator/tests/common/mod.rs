//! A scratch host for comfyctl tests: a root with a host config and a trusted key, bundles built
//! from small trees with the real writer, and the binary run against that root.
#![allow(dead_code, clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const TARGET: &str = "linux-x86_64-cpu";

/// A release's `venv/bin/python`: options before `-c` are skipped (comfyctl runs `python -I -B
/// -c CODE`), `-c ok` passes, `-c 'sh:CODE'` runs CODE with sh, anything else fails (pre-flight
/// without Python).
const FAKE_PYTHON: &str = "#!/bin/sh\nwhile [ $# -gt 0 ] && [ \"$1\" != -c ]; do shift; done\n[ \"$2\" = ok ] && exit 0\ncase \"$2\" in sh:*) exec sh -c \"${2#sh:}\" ;; esac\necho \"check failed: $2\" >&2\nexit 1\n";

pub struct TestHost {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub key: keys::SecretKey,
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

impl From<Output> for Out {
    fn from(o: Output) -> Self {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into(),
            stderr: String::from_utf8_lossy(&o.stderr).into(),
        }
    }
}

/// Contents of one release tree.
pub struct Tree {
    pub files: Vec<(String, Vec<u8>)>,
    pub preflight: Vec<(&'static str, &'static str)>,
    pub expected_nodes: Vec<(&'static str, Vec<&'static str>)>,
    pub device_type: &'static str,
    /// The manifest's `host_libs`.
    pub host_libs: Vec<&'static str>,
    /// Model files the release declares.
    pub models: Vec<bundle::ModelFile>,
}

impl Tree {
    pub fn demo(tag: &str) -> Self {
        let mut files = vec![
            (
                "ComfyUI/main.py".to_owned(),
                format!("print('{tag}')\n").into_bytes(),
            ),
            (
                "ComfyUI/custom_nodes/node_a/__init__.py".to_owned(),
                b"NODE_CLASS_MAPPINGS = {}\n".to_vec(),
            ),
            ("venv/lib/site.py".to_owned(), b"# site\n".to_vec()),
        ];
        for i in 0..40 {
            // Poorly compressible, like the shared objects of a real venv.
            let mut blob = vec![0u8; 64 << 10];
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ i as u64;
            for b in blob.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            files.push((format!("venv/lib/torch/lib{i:02}.so"), blob));
        }
        Tree {
            files,
            preflight: vec![("imports", "ok")],
            expected_nodes: vec![("node_a", vec!["NodeA"])],
            device_type: "cpu",
            host_libs: Vec::new(),
            models: Vec::new(),
        }
    }
}

impl TestHost {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let key = keys::generate();
        fs_err::create_dir_all(root.join("etc/comfyui/keys")).unwrap();
        fs_err::write(
            root.join("etc/comfyui/keys/release.pub"),
            key.public().to_file_string(),
        )
        .unwrap();
        fs_err::write(
            root.join("etc/comfyui/comfyctl.toml"),
            format!("target = \"{TARGET}\"\nlock_wait_secs = 2\nkeep = 2\n"),
        )
        .unwrap();
        TestHost { tmp, root, key }
    }

    /// Puts a top-level `key = value` line at the head of this host's comfyctl.toml.
    pub fn config_line(&self, line: &str) {
        let cfg = self.root.join("etc/comfyui/comfyctl.toml");
        let text = fs_err::read_to_string(&cfg).unwrap();
        fs_err::write(&cfg, format!("{line}\n{text}")).unwrap();
    }

    /// Appends `text` (tables such as `[service]`) to this host's comfyctl.toml.
    pub fn config_tail(&self, text: &str) {
        let cfg = self.root.join("etc/comfyui/comfyctl.toml");
        let old = fs_err::read_to_string(&cfg).unwrap();
        fs_err::write(&cfg, format!("{old}{text}\n")).unwrap();
    }

    pub fn install(&self) -> PathBuf {
        self.root.join("opt/comfyui")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_comfyctl"));
        c.arg("--root").arg(&self.root).args(args);
        c
    }

    pub fn ctl(&self, args: &[&str]) -> Out {
        self.command(args).output().unwrap().into()
    }

    /// Packs a tree into a bundle signed by this host's trusted key.
    pub fn bundle(&self, name: &str, sequence: u64, tree: &Tree) -> PathBuf {
        self.bundle_with_key(name, sequence, tree, &self.key, TARGET)
    }

    pub fn bundle_with_key(
        &self,
        name: &str,
        sequence: u64,
        tree: &Tree,
        key: &keys::SecretKey,
        target: &str,
    ) -> PathBuf {
        let dir = self.tmp.path().join(format!("tree-{name}"));
        let _ = fs_err::remove_dir_all(&dir);
        for (p, c) in &tree.files {
            let p = dir.join(p);
            fs_err::create_dir_all(p.parent().unwrap()).unwrap();
            fs_err::write(&p, c).unwrap();
        }
        fs_err::create_dir_all(dir.join("venv/bin")).unwrap();
        fs_err::write(dir.join("venv/bin/python"), FAKE_PYTHON).unwrap();
        fs_err::set_permissions(
            dir.join("venv/bin/python"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let mut m = bundle::testing::template();
        m.name = "demo".into();
        m.version = name.into();
        m.sequence = sequence;
        m.target = target.into();
        m.preflight = tree
            .preflight
            .iter()
            .map(|(n, c)| bundle::Check {
                name: (*n).into(),
                python: (*c).into(),
            })
            .collect();
        m.expected_nodes = tree
            .expected_nodes
            .iter()
            .map(|(d, c)| ((*d).to_owned(), c.iter().map(|x| (*x).to_owned()).collect()))
            .collect();
        m.launch.device_type = tree.device_type.into();
        m.host_libs = tree.host_libs.iter().map(|l| (*l).to_owned()).collect();
        m.models = tree.models.clone();
        let out = self.tmp.path().join(format!("{name}.bundle"));
        let opts = bundle::PackOptions {
            frame_size: 64 << 10,
            ..Default::default()
        };
        bundle::pack(&dir, m, key, &out, &opts, &|_, _| {}).unwrap();
        out
    }

    /// Activates `bundle` without a service and insists it worked.
    pub fn activate_ok(&self, bundle: &Path) {
        let out = self.ctl(&["activate", bundle.to_str().unwrap(), "--no-service"]);
        assert_eq!(
            out.code,
            0,
            "activating {}: {}",
            bundle.display(),
            out.stderr
        );
    }

    /// The id `current` points at.
    pub fn current(&self) -> Option<String> {
        let t = fs_err::read_link(self.install().join("current")).ok()?;
        Some(t.file_name()?.to_str()?.to_owned())
    }

    /// Everything an activation may change: release dirs, `current`, the journal bytes.
    pub fn snapshot(&self) -> (Vec<String>, Option<String>, Vec<u8>) {
        let mut rel: Vec<String> = fs_err::read_dir(self.install().join("releases"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        rel.sort();
        let journal = fs_err::read(self.install().join("state/state.json")).unwrap_or_default();
        (rel, self.current(), journal)
    }

    pub fn id_of(&self, bundle: &Path) -> String {
        bundle::Bundle::open_unverified(bundle).unwrap().id
    }
}
