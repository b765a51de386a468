//! comfyctl under a real systemd, booted as PID 1 of a sandbox (tests/sandbox/boot.sh): the unit,
//! health checks, automatic rollback, restarts after kill -9, the lifecycle verbs, NFS mappings,
//! per-release databases and nuke. Needs root (as `.ci/run` runs); it fails, never skips, without.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const TARGET: &str = "linux-x86_64-cpu";
const APP: &str = include_str!("fixtures/app.py");
const LAUNCH: &str = "#!/bin/sh\nhere=$(CDPATH= cd -- \"$(dirname -- \"$0\")\" && pwd -P)\nexec /usr/bin/python3 \"$here/ComfyUI/main.py\" \"$@\"\n";

struct Sandbox {
    pid: u32,
    share: tempfile::TempDir,
    key: keys::SecretKey,
}

struct Out {
    code: i32,
    text: String,
}

impl Sandbox {
    fn boot(config: &str) -> Self {
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
        sb.config(config);
        sb
    }

    fn config(&self, extra: &str) {
        let cfg = format!("target = \"{TARGET}\"\n{extra}\n[service]\nuser = \"root\"\ngroup = \"root\"\n[health]\ntimeout_secs = 20\n");
        fs_err::write(self.share.path().join("comfyctl.toml"), cfg).unwrap();
        let s = self.share.path().display();
        let o = self.sh(&format!("mkdir -p /etc/comfyui/keys && cp {s}/comfyctl.toml /etc/comfyui/ && cp {s}/release.pub /etc/comfyui/keys/"));
        assert_eq!(o.code, 0, "{}", o.text);
    }

    fn sh(&self, script: &str) -> Out {
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

    fn ctl(&self, args: &str) -> Out {
        self.sh(&format!("{}/comfyctl {args}", self.share.path().display()))
    }

    /// A release: the stdlib app at `revision`, one custom node with `classes`, expected `expect`.
    fn bundle(
        &self,
        name: &str,
        seq: u64,
        revision: u32,
        classes: &[&str],
        expect: &[&str],
        broken: bool,
    ) -> PathBuf {
        let tree = self.share.path().join(format!("tree-{name}"));
        let node = tree.join("ComfyUI/custom_nodes/node_a");
        fs_err::create_dir_all(&node).unwrap();
        fs_err::write(tree.join("ComfyUI/main.py"), APP).unwrap();
        fs_err::write(tree.join("ComfyUI/REVISION"), revision.to_string()).unwrap();
        if broken {
            fs_err::write(tree.join("ComfyUI/BROKEN"), "").unwrap();
        }
        let map: Vec<String> = classes.iter().map(|c| format!("\"{c}\": object")).collect();
        fs_err::write(
            node.join("__init__.py"),
            format!("NODE_CLASS_MAPPINGS = {{{}}}\n", map.join(", ")),
        )
        .unwrap();
        fs_err::write(tree.join("launch.sh"), LAUNCH).unwrap();
        fs_err::set_permissions(
            tree.join("launch.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let mut m = bundle::testing::template();
        m.name = "demo".into();
        m.version = name.into();
        m.sequence = seq;
        m.target = TARGET.into();
        m.launch = bundle::Launch {
            entry: "launch.sh".into(),
            args: vec!["--cpu".into()],
            env: Default::default(),
            device_type: "cpu".into(),
        };
        m.expected_nodes = [(
            "node_a".to_owned(),
            expect.iter().map(|s| s.to_string()).collect(),
        )]
        .into();
        let out = self.share.path().join(format!("{name}.bundle"));
        bundle::pack(&tree, m, &self.key, &out, &Default::default(), &|_, _| {}).unwrap();
        out
    }

    fn current(&self) -> String {
        self.sh("readlink /opt/comfyui/current")
            .text
            .trim()
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned()
    }

    fn healthy(&self) -> bool {
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

fn id(b: &Path) -> String {
    bundle::Bundle::open_unverified(b).unwrap().id
}

#[test]
fn activation_health_rollback_and_restarts_under_systemd() {
    let sb = Sandbox::boot("");
    let a = sb.bundle("a", 1, 1, &["NodeA"], &["NodeA"], false);
    let out = sb.ctl(&format!("activate {} --json", a.display()));
    assert_eq!(out.code, 0, "{}", out.text);
    assert_eq!(sb.sh("systemctl is-active comfyui").text.trim(), "active");
    assert!(
        sb.healthy(),
        "/system_stats must answer from outside the unit"
    );
    let verify = sb.sh("systemd-analyze verify /etc/systemd/system/comfyui.service");
    assert_eq!(verify.code, 0, "{}", verify.text);
    assert!(sb
        .sh("cat /etc/systemd/system/comfyui.service")
        .text
        .contains("ProtectSystem=strict"));

    // kill -9: systemd restarts it.
    let pid1 = sb
        .sh("systemctl show -p MainPID --value comfyui")
        .text
        .trim()
        .to_owned();
    assert_eq!(sb.sh(&format!("kill -9 {pid1}")).code, 0);
    let t = Instant::now();
    loop {
        let pid2 = sb
            .sh("systemctl show -p MainPID --value comfyui")
            .text
            .trim()
            .to_owned();
        if pid2 != pid1 && pid2 != "0" && sb.healthy() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "not restarted after kill -9"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A release whose app fails to start is rolled back automatically.
    let broken = sb.bundle("broken", 2, 1, &["NodeA"], &["NodeA"], true);
    let out = sb.ctl(&format!("activate {}", broken.display()));
    assert_eq!(out.code, 1, "{}", out.text);
    assert!(
        out.text.contains("rolled back to") && out.text.contains("broken on purpose"),
        "the journal tail is shown: {}",
        out.text
    );
    assert_eq!(sb.current(), id(&a));
    assert!(sb.healthy());

    // One that starts but lacks an expected node, likewise.
    let lacking = sb.bundle("lacking", 3, 1, &["NodeA"], &["NodeA", "NodeB"], false);
    let out = sb.ctl(&format!("activate {}", lacking.display()));
    assert_eq!(out.code, 1, "{}", out.text);
    assert!(
        out.text
            .contains("custom node node_a: 1 of 2 classes missing (NodeB)"),
        "{}",
        out.text
    );
    assert_eq!(sb.current(), id(&a));
    assert!(sb.healthy());

    // A newer release migrates its own copy of the database; rolling back opens the old copy.
    let newer = sb.bundle("newer", 4, 2, &["NodeA"], &["NodeA"], false);
    let out = sb.ctl(&format!("activate {}", newer.display()));
    assert_eq!(out.code, 0, "{}", out.text);
    let out = sb.ctl("rollback");
    assert_eq!(
        out.code, 0,
        "the older release must start cleanly: {}",
        out.text
    );
    assert_eq!(sb.current(), id(&a));
    assert!(sb.healthy());
    // A unit that keeps crashing: doctor shows its last journal lines.
    assert_eq!(
        sb.ctl(&format!(
            "activate {} --no-service --allow-downgrade",
            broken.display()
        ))
        .code,
        0
    );
    // A restart checks health like an activation does: this one fails and says why.
    let out = sb.ctl("service restart");
    assert_eq!(out.code, 1, "{}", out.text);
    assert!(
        out.text.contains("unhealthy") && out.text.contains("broken on purpose"),
        "{}",
        out.text
    );
    std::thread::sleep(Duration::from_secs(3));
    let out = sb.ctl("doctor");
    assert_eq!(out.code, 1, "{}", out.text);
    assert!(
        out.text.contains("FAIL service") && out.text.contains("broken on purpose"),
        "{}",
        out.text
    );
}

#[test]
fn lifecycle_verbs_nfs_links_and_nuke() {
    let sb = Sandbox::boot("[data]\nmodels = \"/srv/nfs/models\"\n");
    let a = sb.bundle("a", 1, 1, &["NodeA"], &["NodeA"], false);
    // The NFS target is missing: refused, nothing changes.
    let out = sb.ctl(&format!("activate {}", a.display()));
    assert_eq!(out.code, 2, "{}", out.text);
    assert!(
        out.text.contains("/srv/nfs/models does not exist"),
        "{}",
        out.text
    );
    assert_ne!(sb.sh("test -e /opt/comfyui/current").code, 0);
    assert_eq!(
        sb.sh("mkdir -p /srv/nfs/models && echo weights > /srv/nfs/models/model.safetensors")
            .code,
        0
    );
    assert_eq!(sb.ctl("setup").code, 0);
    let again = sb.ctl("setup --json");
    assert_eq!(again.code, 0, "{}", again.text);
    assert!(
        again.text.contains("\"changed\": false"),
        "setup is idempotent: {}",
        again.text
    );
    let out = sb.ctl(&format!("activate {}", a.display()));
    assert_eq!(out.code, 0, "{}", out.text);
    assert_eq!(
        sb.sh("readlink /opt/comfyui/data/models").text.trim(),
        "/srv/nfs/models"
    );

    assert_eq!(sb.ctl("service pause").code, 0);
    assert_eq!(sb.sh("systemctl is-active comfyui").text.trim(), "inactive");
    assert_eq!(
        sb.sh("systemctl is-enabled comfyui").text.trim(),
        "disabled"
    );
    assert_eq!(sb.ctl("service start").code, 0);
    assert!(sb.healthy());
    assert_eq!(sb.sh("systemctl is-enabled comfyui").text.trim(), "enabled");
    assert_eq!(sb.ctl("service restart").code, 0);
    assert!(sb.healthy());
    // An edited host config takes effect at the next restart (the Ansible role relies on it).
    let port = |p: u16| {
        sb.sh(&format!(
            "sed -i '/^port = /d; s/^\\[service\\]$/[service]\\nport = {p}/' /etc/comfyui/comfyctl.toml"
        ))
    };
    assert_eq!(port(8190).code, 0);
    let out = sb.ctl("service restart");
    assert_eq!(out.code, 0, "{}", out.text);
    assert_eq!(sb.ctl("health --port 8190 --timeout 5").code, 0);
    assert_ne!(sb.ctl("health --port 8188 --timeout 1").code, 0);
    assert_eq!(port(8188).code, 0);
    assert_eq!(sb.ctl("service restart").code, 0);
    assert!(sb.healthy());
    assert_eq!(sb.ctl("service remove").code, 0);
    assert_ne!(sb.sh("test -e /etc/systemd/system/comfyui.service").code, 0);
    assert_eq!(sb.ctl("service install").code, 0);
    assert!(sb.healthy());

    assert_eq!(sb.sh("echo mine > /opt/comfyui/data/input/photo.png && echo out > /opt/comfyui/data/output/result.png").code, 0);
    assert_eq!(sb.ctl("nuke").code, 2, "nuke needs --yes");
    let out = sb.ctl("nuke --yes --json");
    assert_eq!(out.code, 0, "{}", out.text);
    for kept in [
        "/opt/comfyui/data/input/photo.png",
        "/opt/comfyui/data/output/result.png",
        "/srv/nfs/models/model.safetensors",
    ] {
        assert_eq!(sb.sh(&format!("test -f {kept}")).code, 0, "{kept} was lost");
    }
    for gone in [
        "/opt/comfyui/releases",
        "/opt/comfyui/store",
        "/opt/comfyui/current",
        "/etc/systemd/system/comfyui.service",
        "/opt/comfyui/data/models",
    ] {
        assert_ne!(
            sb.sh(&format!("test -e {gone}")).code,
            0,
            "{gone} survived nuke"
        );
    }
}
