//! A real systemd booted as PID 1 of a sandbox (tests/sandbox/boot.sh: its own namespaces, an
//! overlay of this machine's root on a tmpfs), with comfyctl and small releases of a stdlib app
//! that follows ComfyUI's rules. Users and groups made inside live in the overlay: this
//! machine's accounts, units and `/opt` are never touched. Needs root.
#![allow(dead_code, clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const TARGET: &str = "linux-x86_64-cpu";
pub const APP: &str = include_str!("../fixtures/app.py");
const LAUNCH: &str = "#!/bin/sh\nhere=$(CDPATH= cd -- \"$(dirname -- \"$0\")\" && pwd -P)\nexec /usr/bin/python3 \"$here/ComfyUI/main.py\" \"$@\"\n";
/// A release's interpreter: the machine's Python 3 (a release may not link outside itself).
const PYTHON: &str = "#!/bin/sh\nexec /usr/bin/python3 \"$@\"\n";

pub struct Sandbox {
    pub pid: u32,
    pub share: tempfile::TempDir,
    pub key: keys::SecretKey,
}

pub struct Out {
    pub code: i32,
    pub text: String,
}

/// One test release: the app at `revision`, one custom node `node_a` registering `classes`, the
/// manifest expecting `expect`; optionally broken, with node state, ComfyUI-Manager listed, a
/// pre-flight check, a `torch` package, or another app.
pub struct Release<'a> {
    pub name: &'a str,
    pub sequence: u64,
    pub revision: u32,
    pub classes: Vec<&'a str>,
    pub expect: Vec<&'a str>,
    pub broken: bool,
    /// Node state: `node_a/<file>` seeded from the release's copy holding `content`.
    pub state: Vec<(&'a str, &'a str)>,
    pub manager: bool,
    pub preflight: Option<&'a str>,
    pub torch: bool,
    pub app: Option<String>,
}

impl<'a> Release<'a> {
    pub fn new(name: &'a str, sequence: u64) -> Self {
        Release {
            name,
            sequence,
            revision: 1,
            classes: vec!["NodeA"],
            expect: vec!["NodeA"],
            broken: false,
            state: Vec::new(),
            manager: false,
            preflight: None,
            torch: false,
            app: None,
        }
    }
}

impl Sandbox {
    /// Boots a sandbox whose comfyctl.toml is `config` (the target and a trusted key added).
    pub fn boot_with(config: &str) -> Self {
        let share = tempfile::tempdir().unwrap();
        fs_err::set_permissions(share.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let pidfile = share.path().join("pid");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/sandbox/boot.sh");
        let st = Command::new("bash")
            .arg(&script)
            .arg(share.path())
            .arg(&pidfile)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "booting systemd in a sandbox failed (needs root, unshare, overlayfs)"
        );
        let pid = fs_err::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let key = keys::generate();
        // The sandbox has its own /tmp: the binary travels in the shared directory (CI may build
        // this repository under /tmp).
        fs_err::copy(
            env!("CARGO_BIN_EXE_comfyctl"),
            share.path().join("comfyctl"),
        )
        .unwrap();
        let sb = Sandbox { pid, share, key };
        fs_err::write(
            sb.share.path().join("release.pub"),
            sb.key.public().to_file_string(),
        )
        .unwrap();
        sb.write_config(config);
        sb
    }

    /// Boots a sandbox whose unit runs as root (the seed's way), `extra` added to its config.
    pub fn boot(extra: &str) -> Self {
        Self::boot_with(&format!(
            "{extra}\n[service]\nuser = \"root\"\ngroup = \"root\"\n[health]\ntimeout_secs = 20\n"
        ))
    }

    pub fn write_config(&self, config: &str) {
        let cfg = format!("target = \"{TARGET}\"\n{config}\n");
        fs_err::write(self.share.path().join("comfyctl.toml"), cfg).unwrap();
        let s = self.share.path().display();
        let o = self.sh(&format!("mkdir -p /etc/comfyui/keys && cp {s}/comfyctl.toml /etc/comfyui/ && cp {s}/release.pub /etc/comfyui/keys/"));
        assert_eq!(o.code, 0, "{}", o.text);
    }

    /// Runs `script` with sh inside the sandbox, as root.
    pub fn sh(&self, script: &str) -> Out {
        let o = Command::new("nsenter")
            .arg("-t")
            .arg(self.pid.to_string())
            .arg("-a")
            .args(["sh", "-c", script])
            .output()
            .unwrap();
        Out {
            code: o.status.code().unwrap_or(-1),
            text: format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        }
    }

    /// Runs `script` inside the sandbox as `user` with its groups (plus `extra_group`, as the
    /// unit's SupplementaryGroups gives the service the access group).
    pub fn sh_as(&self, user: &str, extra_group: Option<&str>, script: &str) -> Out {
        let groups = match extra_group {
            Some(g) => format!("--groups {user},{g}"),
            None => "--init-groups".to_owned(),
        };
        let quoted = script.replace('\'', "'\\''");
        self.sh(&format!(
            "cd / && setpriv --reuid {user} --regid {user} {groups} -- sh -c '{quoted}'"
        ))
    }

    pub fn ctl(&self, args: &str) -> Out {
        self.sh(&format!("{}/comfyctl {args}", self.share.path().display()))
    }

    /// A release of the stdlib app with one custom node.
    pub fn bundle(
        &self,
        name: &str,
        seq: u64,
        revision: u32,
        classes: &[&str],
        expect: &[&str],
        broken: bool,
    ) -> PathBuf {
        self.release(&Release {
            revision,
            classes: classes.to_vec(),
            expect: expect.to_vec(),
            broken,
            ..Release::new(name, seq)
        })
    }

    pub fn release(&self, r: &Release) -> PathBuf {
        let tree = self.share.path().join(format!("tree-{}", r.name));
        let _ = fs_err::remove_dir_all(&tree);
        let node = tree.join("ComfyUI/custom_nodes/node_a");
        fs_err::create_dir_all(&node).unwrap();
        fs_err::write(
            tree.join("ComfyUI/main.py"),
            r.app.as_deref().unwrap_or(APP),
        )
        .unwrap();
        fs_err::write(tree.join("ComfyUI/REVISION"), r.revision.to_string()).unwrap();
        if r.broken {
            fs_err::write(tree.join("ComfyUI/BROKEN"), "").unwrap();
        }
        let map: Vec<String> = r
            .classes
            .iter()
            .map(|c| format!("\"{c}\": object"))
            .collect();
        fs_err::write(
            node.join("__init__.py"),
            format!("NODE_CLASS_MAPPINGS = {{{}}}\n", map.join(", ")),
        )
        .unwrap();
        let exe = |p: &Path, text: &str| {
            fs_err::create_dir_all(p.parent().unwrap()).unwrap();
            fs_err::write(p, text).unwrap();
            fs_err::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        exe(&tree.join("launch.sh"), LAUNCH);
        exe(&tree.join("venv/bin/python"), PYTHON);
        let mut m = bundle::testing::template();
        for (file, content) in &r.state {
            let seed = tree.join("node-state-seed/node_a").join(file);
            fs_err::create_dir_all(seed.parent().unwrap()).unwrap();
            fs_err::write(&seed, content).unwrap();
            let path = format!("ComfyUI/custom_nodes/node_a/{file}");
            let target = format!("node_a/{file}");
            fs_err::create_dir_all(tree.join(&path).parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(
                bundle::StatePath::link_target(&path, &target),
                tree.join(&path),
            )
            .unwrap();
            m.state.push(bundle::StatePath {
                path,
                target,
                dir: false,
                seed: Some(format!("node-state-seed/node_a/{file}")),
            });
        }
        if r.manager {
            m.provenance.custom_nodes.push(bundle::GitSource {
                name: "ComfyUI-Manager".into(),
                url: "https://example.invalid/ComfyUI-Manager".into(),
                commit: "0".repeat(40),
                disabled: false,
            });
        }
        if r.torch {
            m.provenance.packages.push("torch==2.9.1".into());
        }
        if let Some(code) = r.preflight {
            m.preflight.push(bundle::Check {
                name: "check".into(),
                python: code.into(),
            });
        }
        m.name = "demo".into();
        m.version = r.name.into();
        m.sequence = r.sequence;
        m.target = TARGET.into();
        m.launch = bundle::Launch {
            entry: "launch.sh".into(),
            args: vec!["--cpu".into()],
            env: Default::default(),
            device_type: "cpu".into(),
        };
        m.expected_nodes = [(
            "node_a".to_owned(),
            r.expect.iter().map(|s| s.to_string()).collect(),
        )]
        .into();
        let out = self.share.path().join(format!("{}.bundle", r.name));
        bundle::pack(&tree, m, &self.key, &out, &Default::default(), &|_, _| {}).unwrap();
        out
    }

    pub fn current(&self) -> String {
        self.sh("readlink /opt/comfyui/current")
            .text
            .trim()
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned()
    }

    pub fn healthy(&self) -> bool {
        let out = self.ctl("health --port 8188 --timeout 20");
        if out.code != 0 {
            eprintln!(
                "unhealthy: {}\n{}",
                out.text,
                self.sh(
                    "systemctl status --no-pager comfyui; journalctl -u comfyui -n 20 --no-pager"
                )
                .text
            );
        }
        out.code == 0
    }

    /// The unit's main process id (the running release's app).
    pub fn main_pid(&self) -> String {
        self.sh("systemctl show -p MainPID --value comfyui")
            .text
            .trim()
            .to_owned()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/sandbox/stop.sh");
        let _ = Command::new("bash")
            .arg(script)
            .arg(self.pid.to_string())
            .status();
    }
}

pub fn id(b: &Path) -> String {
    bundle::Bundle::open_unverified(b).unwrap().id
}
