//! The service user is not root (issue 22): custom nodes are third-party code running as the
//! service, and every member of the access group can write the shared data too. On a real
//! systemd in a sandbox, set up with `comfyctl setup`'s defaults (service user `comfyui`, one
//! access-group user `alice`), these tests do what such code could: plant links, FIFOs, sparse,
//! huge and hardlinked files where root-run comfyctl looks, swap directories while it works,
//! signal its checks, and answer its health checks with hostile bytes. Each asserts that files
//! only root may read or write are unchanged (`/root/victim`, `/etc/shadow`, `/etc/passwd`) and
//! that the old release keeps serving (the same main process, where the refusal comes before the
//! unit stops). Needs root; `.ci/run` runs it.
#![allow(clippy::unwrap_used)]

mod sandbox;

use sandbox::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const DATA: &str = "/opt/comfyui/data";

/// A host set up as `comfyctl setup` leaves it, running release A: node state (`conf.json`,
/// `sub/deep.json`), ComfyUI-Manager listed (so its config is written), a `torch` package (so
/// doctor runs its torch check).
struct Host {
    sb: Sandbox,
    a: PathBuf,
    a_id: String,
}

fn release_a<'a>() -> Release<'a> {
    Release {
        state: vec![("conf.json", "{\"a\": 1}"), ("sub/deep.json", "{}")],
        manager: true,
        torch: true,
        ..Release::new("a", 1)
    }
}

fn host(extra: &str) -> Host {
    let sb = Sandbox::boot_with(&format!(
        "{extra}\n[access]\nusers = [\"alice\"]\n[health]\ntimeout_secs = 20\n"
    ));
    let o = sb.sh(
        "useradd --create-home alice && umask 077 && echo victim > /root/victim \
         && chmod 600 /root/victim",
    );
    assert_eq!(o.code, 0, "{}", o.text);
    let o = sb.ctl(&format!(
        "setup --key {}/release.pub",
        sb.share.path().display()
    ));
    assert_eq!(o.code, 0, "{}", o.text);
    let a = sb.release(&release_a());
    let o = sb.ctl(&format!("activate {}", a.display()));
    assert_eq!(o.code, 0, "{}", o.text);
    assert_eq!(
        sb.sh("ps -o user= -p $(systemctl show -p MainPID --value comfyui)")
            .text
            .trim(),
        "comfyui",
        "the unit runs as the service user"
    );
    let a_id = id(&a);
    Host { sb, a, a_id }
}

impl Host {
    /// What must never change: files only root may read or write, and what /root holds.
    fn victims(&self) -> String {
        self.sb
            .sh(
                "stat -c '%n %U %G %a %s' /root/victim /etc/shadow /etc/passwd; \
                 sha256sum /root/victim /etc/shadow /etc/passwd; ls -la --time-style=+ /root",
            )
            .text
    }

    fn as_service(&self, script: &str) -> Out {
        // As the unit runs it: the service user with the access group.
        self.sb.sh_as("comfyui", Some("comfyui-users"), script)
    }

    fn as_alice(&self, script: &str) -> Out {
        self.sb.sh_as("alice", None, script)
    }

    fn db(&self) -> String {
        format!("{DATA}/db/{}", self.a_id)
    }

    /// `activate`, asserting it was refused (exit 2) before the unit stopped, naming `why`.
    fn refused_before_stop(&self, bundle: &std::path::Path, why: &str) {
        let pid = self.sb.main_pid();
        let t = Instant::now();
        let o = self
            .sb
            .ctl(&format!("activate {} --json", bundle.display()));
        assert_eq!(o.code, 2, "{}", o.text);
        assert!(o.text.contains(why), "expected {why:?}: {}", o.text);
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "took {:?}",
            t.elapsed()
        );
        assert_eq!(self.sb.current(), self.a_id, "current moved");
        assert_eq!(
            self.sb.main_pid(),
            pid,
            "the old release was stopped for an activation refused before it"
        );
        assert!(self.sb.healthy());
    }
}

#[test]
#[cfg_attr(
    not(feature = "host-privileged"),
    ignore = "needs root and a sandboxed systemd; scripts/test.sh runs it"
)]
fn the_database_copy_refuses_links_fifos_oversize_and_hardlinks_and_keeps_holes() {
    let h = host("");
    let before = h.victims();
    let b = h.sb.release(&Release {
        state: vec![("conf.json", "{}")],
        ..Release::new("b", 2)
    });
    let b_db = format!("{DATA}/db/{}", id(&b));
    let db = h.db();

    // A link where the previous release's database was: root would copy /root/victim into a
    // file the service reads.
    let o = h.as_service(&format!(
        "cd {db} && mv comfyui.db real.db && ln -s /root/victim comfyui.db"
    ));
    assert_eq!(o.code, 0, "{}", o.text);
    h.refused_before_stop(
        &b,
        "comfyui.db is not a regular file reached without symbolic links",
    );
    assert_ne!(h.sb.sh(&format!("test -e {b_db}")).code, 0);
    assert_eq!(
        h.as_service(&format!(
            "cd {db} && rm comfyui.db && mv real.db comfyui.db"
        ))
        .code,
        0
    );

    // A FIFO: refused at once, not waited on with the unit stopped and the lock held.
    assert_eq!(h.as_service(&format!("mkfifo {db}/comfyui.db-wal")).code, 0);
    h.refused_before_stop(&b, "a FIFO, socket or device, not a regular file");
    assert_eq!(h.sb.ctl("status").code, 0, "the lock was left held");
    assert_eq!(h.as_service(&format!("rm {db}/comfyui.db-wal")).code, 0);

    // A hardlink to a file only root may read (where protected_hardlinks is off, the service
    // could make one; here root plants it for the test).
    assert_eq!(
        h.sb.sh(&format!("ln /root/victim {db}/comfyui.db-shm"))
            .code,
        0
    );
    h.refused_before_stop(&b, "only a file of uid");
    assert_eq!(h.sb.sh(&format!("rm {db}/comfyui.db-shm")).code, 0);

    // Over the configured size.
    h.sb.write_config(
        "[access]\nusers = [\"alice\"]\n[health]\ntimeout_secs = 20\n[data]\nmax_database_bytes = 1048576\n",
    );
    assert_eq!(
        h.as_service(&format!("truncate -s 2M {db}/comfyui.db-shm"))
            .code,
        0
    );
    h.refused_before_stop(&b, "over the 1048576 byte limit");
    h.sb.write_config("[access]\nusers = [\"alice\"]\n[health]\ntimeout_secs = 20\n");

    // A sparse gigabyte under the limit is copied sparse: root writes its few bytes of data,
    // not a gigabyte.
    assert_eq!(
        h.as_service(&format!(
            "rm {db}/comfyui.db-shm && truncate -s 1G {db}/comfyui.db-wal"
        ))
        .code,
        0
    );
    let o = h.sb.ctl(&format!("activate {}", b.display()));
    assert_eq!(o.code, 0, "{}", o.text);
    let st = h.sb.sh(&format!(
        "stat -c '%s %b %B %U %a' {b_db}/comfyui.db-wal; stat -c '%U %a' {b_db}"
    ));
    let f: Vec<u64> = st
        .text
        .split_whitespace()
        .take(3)
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(f[0], 1 << 30, "{}", st.text);
    assert!(
        f[1] * f[2] < 1 << 20,
        "{} bytes allocated for a sparse copy",
        f[1] * f[2]
    );
    assert!(
        st.text.contains("comfyui 660") && st.text.contains("comfyui 770"),
        "{}",
        st.text
    );
    assert!(h.sb.healthy());
    assert_eq!(h.victims(), before);
}

/// Racers as the service and as an access-group member keep swapping links and directories in
/// every place root writes while activations and rollbacks go on; no try may win.
#[test]
#[cfg_attr(
    not(feature = "host-privileged"),
    ignore = "needs root and a sandboxed systemd; scripts/test.sh runs it"
)]
fn racers_that_keep_swapping_links_never_steer_a_root_write() {
    let h = host("");
    let before = h.victims();
    let b = h.sb.release(&Release {
        state: vec![("conf.json", "{\"b\": 1}"), ("sub/deep.json", "{}")],
        manager: true,
        ..Release::new("b", 2)
    });
    let b_id = id(&b);
    let db = h.db();
    let out = format!("{DATA}/output");
    let racer = format!(
        "i=0; while [ ! -e {out}/stop ]; do \
           cd {db} && {{ mv -f comfyui.db .real; ln -sfn /root/victim comfyui.db; ln -sfn /etc/passwd comfyui.db-wal; \
             mkfifo comfyui.db-shm; rm -f comfyui.db comfyui.db-wal comfyui.db-shm; mv -f .real comfyui.db; }} 2>/dev/null; \
           cd {DATA}/user/default && {{ mv ComfyUI-Manager .m && ln -sfn /root ComfyUI-Manager; rm -f ComfyUI-Manager; mv .m ComfyUI-Manager; }} 2>/dev/null; \
           cd {DATA}/node-state/node_a && {{ mv sub .s && ln -sfn /root sub; ln -sfn /root/victim conf.json; rm -f sub conf.json; mv .s sub; }} 2>/dev/null; \
           ln -sfn /etc/shadow /opt/comfyui/state/unit/extra_model_paths.yaml 2>/dev/null; \
           ln -sfn /etc/shadow {DATA}/extra_model_paths.yaml 2>/dev/null; \
           mv {DATA}/db {DATA}/db.x 2>/dev/null; \
           i=$((i+1)); echo $i > {out}/count-$(id -un); \
         done"
    );
    let alice = format!(
        "i=0; while [ ! -e {out}/stop ]; do \
           mv {DATA}/db {DATA}/db.x 2>/dev/null; mv {DATA}/node-state {DATA}/ns.x 2>/dev/null; \
           ln -sfn /root {DATA}/node-state.x 2>/dev/null; \
           cd {DATA}/user/default && {{ mv ComfyUI-Manager .a && ln -sfn /root ComfyUI-Manager; rm -f ComfyUI-Manager; mv .a ComfyUI-Manager; }} 2>/dev/null; \
           i=$((i+1)); echo $i > {out}/count-$(id -un); \
         done"
    );
    // In the background inside the sandbox, as each user.
    for (user, group, script) in [
        ("comfyui", "--groups comfyui,comfyui-users", &racer),
        ("alice", "--init-groups", &alice),
    ] {
        let q = script.replace('\'', "'\\''");
        let o = h.sb.sh(&format!(
            "setpriv --reuid {user} --regid {user} {group} -- sh -c '{q}' >/dev/null 2>&1 &"
        ));
        assert_eq!(o.code, 0, "{}", o.text);
    }
    let mut outcomes = Vec::new();
    for _ in 0..8 {
        let a = h.sb.ctl(&format!("activate {}", b.display()));
        let r = h.sb.ctl(&format!("rollback --to {}", &h.a_id[..12]));
        outcomes.push((a.code, r.code));
        for (code, text) in [(a.code, &a.text), (r.code, &r.text)] {
            assert!([0, 1, 2].contains(&code), "{text}");
        }
        assert_eq!(h.victims(), before, "a racer won: {}\n{}", a.text, r.text);
        let cur = h.sb.current();
        assert!(cur == h.a_id || cur == b_id, "current is {cur}");
        // Root's next copy and writes race again: the new release's database, the seeded state and
        // the Manager's config are made anew.
        let o = h.sb.sh(&format!(
            "rm -rf {DATA}/db/{b_id}; rm -f {DATA}/node-state/node_a/conf.json {DATA}/user/default/ComfyUI-Manager/config.ini"
        ));
        assert_eq!(o.code, 0, "{}", o.text);
    }
    assert_eq!(h.sb.sh(&format!("touch {out}/stop; sleep 1")).code, 0);
    let counts =
        h.sb.sh(&format!("cat {out}/count-comfyui {out}/count-alice"))
            .text;
    let n: Vec<u64> = counts
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert!(
        n.len() == 2 && n.iter().all(|&c| c > 50),
        "the racers hardly ran: {counts}"
    );
    eprintln!("activate/rollback exit codes under the racers: {outcomes:?}; racer loops {n:?}");
    // Root's places were never the racers' to change, and nothing outside data/ became theirs.
    assert_eq!(h.victims(), before);
    let theirs = h.sb.sh(
        "find /root /etc /opt/comfyui/releases /opt/comfyui/store /opt/comfyui/state /usr/local \
         -xdev \\( -user comfyui -o -user alice -o -group comfyui-users \\) -print 2>/dev/null",
    );
    assert_eq!(
        theirs.text.trim(),
        "",
        "files became the service's or the group's outside data/"
    );
    for p in [
        "db",
        "node-state",
        "extra_model_paths.yaml",
        "db.x",
        "ns.x",
        "node-state.x",
    ] {
        let o = h.sb.sh(&format!("stat -c '%U %a %F' {DATA}/{p} 2>&1"));
        assert!(
            o.text.contains("root 755 directory") || o.text.contains("No such file"),
            "{p}: {}",
            o.text
        );
    }
    // The host still works once they stop.
    let o = h.sb.ctl(&format!("activate {}", b.display()));
    assert!(o.code == 0, "{}", o.text);
    assert_eq!(h.sb.current(), b_id);
    assert!(h.sb.healthy());
    let o = h.sb.ctl("verify");
    assert_eq!(o.code, 0, "{}", o.text);
}

#[test]
#[cfg_attr(
    not(feature = "host-privileged"),
    ignore = "needs root and a sandboxed systemd; scripts/test.sh runs it"
)]
fn node_state_and_the_managers_config_are_never_made_through_a_link() {
    let h = host("");
    let before = h.victims();
    let ns = format!("{DATA}/node-state");
    let rel = format!("/opt/comfyui/releases/{}", h.a_id);
    let st = h.sb.sh(&format!(
        "stat -c '%U %a' {ns} {ns}/node_a {ns}/node_a/conf.json {DATA}/user/default/ComfyUI-Manager/config.ini"
    ));
    assert_eq!(
        st.text.split_whitespace().collect::<Vec<_>>(),
        ["root", "755", "comfyui", "770", "comfyui", "660", "comfyui", "660"],
        "{}",
        st.text
    );
    // node-state/ is root's: the service cannot point a node's state anywhere.
    for (who, o) in [
        ("comfyui", h.as_service(&format!("ln -s /root {ns}/evil"))),
        ("comfyui", h.as_service(&format!("mv {ns}/node_a {ns}/x"))),
        ("alice", h.as_alice(&format!("ln -s /root {ns}/evil"))),
    ] {
        assert_ne!(o.code, 0, "{who} changed node-state/: {}", o.text);
    }
    // As an older comfyctl left it (node-state/ the service's): a node's state is a link.
    assert_eq!(
        h.sb.sh(&format!(
            "mv {ns}/node_a {ns}/node_a.real && ln -s /root {ns}/node_a"
        ))
        .code,
        0
    );
    let pid = h.sb.main_pid();
    let o = h.sb.ctl("service restart");
    assert_eq!(o.code, 2, "{}", o.text);
    assert!(
        o.text
            .contains("node_a is not a directory reached without symbolic links"),
        "{}",
        o.text
    );
    assert_eq!(
        h.sb.main_pid(),
        pid,
        "a refused restart stopped the service"
    );
    assert_eq!(
        h.sb.sh(&format!(
            "rm {ns}/node_a && mv {ns}/node_a.real {ns}/node_a"
        ))
        .code,
        0
    );
    // Below a node's folder (the service's): a link into an installed release.
    assert_eq!(
        h.as_service(&format!(
            "cd {ns}/node_a && rm -r sub && ln -s {rel}/ComfyUI/custom_nodes/node_a sub"
        ))
        .code,
        0
    );
    let o = h.sb.ctl("service restart");
    assert_eq!(o.code, 2, "{}", o.text);
    assert!(
        o.text
            .contains("sub is not a directory reached without symbolic links"),
        "{}",
        o.text
    );
    assert_eq!(h.sb.main_pid(), pid);
    let v = h.sb.ctl(&format!("verify {}", h.a_id));
    assert_eq!(v.code, 0, "the release gained a file: {}", v.text);
    assert_eq!(h.as_service(&format!("rm {ns}/node_a/sub")).code, 0);
    // The Manager's folder (in data/user, which the service and the group write) pointed at /root.
    assert_eq!(
        h.as_service(&format!(
            "cd {DATA}/user/default && mv ComfyUI-Manager m.real && ln -s /root ComfyUI-Manager"
        ))
        .code,
        0
    );
    let o = h.sb.ctl("service restart");
    assert_eq!(o.code, 2, "{}", o.text);
    assert!(
        o.text
            .contains("ComfyUI-Manager is not a directory reached without symbolic links"),
        "{}",
        o.text
    );
    assert_eq!(h.sb.main_pid(), pid);
    assert_eq!(
        h.as_service(&format!(
            "cd {DATA}/user/default && rm ComfyUI-Manager && mv m.real ComfyUI-Manager"
        ))
        .code,
        0
    );
    assert_eq!(h.sb.ctl("service restart").code, 0);
    assert_eq!(h.victims(), before);

    // A file planted in an installed release (as the old bug let the service do): a rollback to
    // it is refused, naming the file, and verify reports it.
    let b = h.sb.release(&Release::new("b", 2));
    assert_eq!(h.sb.ctl(&format!("activate {}", b.display())).code, 0);
    assert_eq!(
        h.sb.sh(&format!(
            "touch {rel}/ComfyUI/custom_nodes/node_a/planted.py"
        ))
        .code,
        0
    );
    let o = h.sb.ctl("rollback");
    assert_eq!(o.code, 2, "{}", o.text);
    assert!(o.text.contains("planted.py"), "{}", o.text);
    assert_eq!(h.sb.current(), id(&b));
    let v = h.sb.ctl(&format!("verify {} --json", h.a_id));
    assert!(
        v.text.contains("planted.py") && v.text.contains("not listed in the manifest"),
        "{}",
        v.text
    );
    // Activating its bundle again writes a clean copy.
    let o =
        h.sb.ctl(&format!("activate {} --allow-downgrade", h.a.display()));
    assert_eq!(o.code, 0, "{}", o.text);
    assert_ne!(
        h.sb.sh(&format!(
            "test -e {rel}/ComfyUI/custom_nodes/node_a/planted.py"
        ))
        .code,
        0
    );
}

#[test]
#[cfg_attr(
    not(feature = "host-privileged"),
    ignore = "needs root and a sandboxed systemd; scripts/test.sh runs it"
)]
fn roots_directories_are_roots_alone_and_an_older_layout_is_taken_back() {
    let h = host("");
    let before = h.victims();
    let rel = format!("/opt/comfyui/releases/{}", h.a_id);
    let attempts = [
        format!("touch {DATA}/x"),
        format!("mv {DATA}/db {DATA}/db2"),
        format!("mv {DATA}/node-state {DATA}/ns"),
        format!("ln -s / {DATA}/l"),
        format!("mkdir {DATA}/db/x"),
        "touch /opt/comfyui/releases/x".to_owned(),
        "touch /opt/comfyui/store/x".to_owned(),
        "touch /opt/comfyui/state/x".to_owned(),
        "touch /opt/comfyui/state/unit/x".to_owned(),
        "echo x >> /opt/comfyui/state/unit/service.env".to_owned(),
        format!("echo x >> {rel}/launch.sh"),
        format!("mv {rel} {DATA}/output/"),
        format!("ln {rel}/launch.sh {DATA}/output/hardlink"),
        "echo x >> /etc/systemd/system/comfyui.service".to_owned(),
        "ln -sfn /tmp /opt/comfyui/current".to_owned(),
    ];
    for a in &attempts {
        for (who, o) in [("comfyui", h.as_service(a)), ("alice", h.as_alice(a))] {
            assert_ne!(o.code, 0, "{who} could `{a}`");
        }
    }
    // The unit's inputs: root's, readable by the service's group only.
    let st = h.sb.sh(
        "stat -c '%U %G %a' /opt/comfyui/state/unit /opt/comfyui/state/unit/service.env \
         /opt/comfyui/state/unit/extra_model_paths.yaml",
    );
    assert_eq!(
        st.text.split_whitespace().collect::<Vec<_>>(),
        ["root", "comfyui", "750", "root", "comfyui", "640", "root", "comfyui", "640"],
        "{}",
        st.text
    );
    // As an older comfyctl left a host: data/ and its root folders group-writable, setgid.
    let o = h.sb.sh(&format!(
        "chgrp comfyui-users {DATA} && chmod 2775 {DATA} && chown comfyui {DATA}/db {DATA}/node-state \
         && chmod 2775 {DATA}/db {DATA}/node-state"
    ));
    assert_eq!(o.code, 0, "{}", o.text);
    let o = h.sb.ctl("service restart");
    assert_eq!(o.code, 0, "{}", o.text);
    let st = h.sb.sh(&format!(
        "stat -c '%U %a' {DATA} {DATA}/db {DATA}/node-state"
    ));
    assert_eq!(
        st.text.split_whitespace().collect::<Vec<_>>(),
        ["root", "755", "root", "755", "root", "755"],
        "{}",
        st.text
    );
    let d = h.sb.ctl("doctor");
    assert!(d.text.contains("ok   data permissions"), "{}", d.text);
    assert_eq!(h.victims(), before);
}

#[test]
#[cfg_attr(
    not(feature = "host-privileged"),
    ignore = "needs root and a sandboxed systemd; scripts/test.sh runs it"
)]
fn unit_inputs_that_cannot_be_written_leave_the_old_release_serving() {
    let h = host("");
    let b = h.sb.release(&Release::new("b", 2));
    // A root with a text editor turned the model-paths file into a directory.
    let y = "/opt/comfyui/state/unit/extra_model_paths.yaml";
    assert_eq!(h.sb.sh(&format!("mv {y} {y}.keep && mkdir {y}")).code, 0);
    h.refused_before_stop(
        &b,
        "extra_model_paths.yaml is a directory where comfyctl keeps a file",
    );
    let pid = h.sb.main_pid();
    let o = h.sb.ctl("service restart");
    assert_eq!(o.code, 2, "{}", o.text);
    assert_eq!(
        h.sb.main_pid(),
        pid,
        "a restart that cannot write the inputs stopped the service"
    );
    assert_eq!(h.sb.sh(&format!("rmdir {y} && mv {y}.keep {y}")).code, 0);
    // A release that fails after the stop: the old one comes back with its own inputs.
    let broken = h.sb.release(&Release {
        broken: true,
        app: Some(APP.replace(
            "print(\"this release is broken on purpose\", flush=True)",
            "print(\"\\x1b]0;owned\\x07\\x1b[2Jthis release is broken on purpose\", flush=True)",
        )),
        ..Release::new("broken", 3)
    });
    let o = h.sb.ctl(&format!("activate {}", broken.display()));
    assert_eq!(o.code, 1, "{}", o.text);
    assert!(
        o.text.contains("rolled back to") && o.text.contains("healthy again"),
        "{}",
        o.text
    );
    // The app's log lines reach root's terminal escaped.
    assert!(
        !o.text.contains('\u{1b}'),
        "a raw escape reached the terminal: {:?}",
        o.text
    );
    assert!(o.text.contains("\\u{1b}]0;owned"), "{}", o.text);
    assert_eq!(h.sb.current(), h.a_id);
    let env = h.sb.sh("cat /opt/comfyui/state/unit/service.env").text;
    assert!(
        env.contains(&format!("COMFYUI_RELEASE={}", h.a_id)),
        "{env}"
    );
    assert!(h.sb.healthy());
    let o =
        h.sb.ctl(&format!("activate {} --allow-downgrade", b.display()));
    assert_eq!(o.code, 0, "{}", o.text);
}

#[test]
#[cfg_attr(
    not(feature = "host-privileged"),
    ignore = "needs root and a sandboxed systemd; scripts/test.sh runs it"
)]
fn checks_run_where_the_service_cannot_reach_them() {
    let h = host("");
    // doctor runs the release's interpreter for its torch check: a torch.py the service wrote
    // where the operator stands (and on PYTHONPATH) must not run, as root or at all.
    let out = format!("{DATA}/output");
    let plant = "import os\nopen(os.path.join(os.path.dirname(os.path.abspath(__file__)), \"ran-as-%d\" % os.getuid()), \"w\").close()\n";
    assert_eq!(
        h.as_service(&format!(
            "printf '{}' > {out}/torch.py",
            plant.replace('\n', "\\n").replace('%', "%%")
        ))
        .code,
        0
    );
    let d = h.sb.sh(&format!(
        "cd {out} && PYTHONPATH={out} PYTHONSTARTUP={out}/torch.py {}/comfyctl doctor",
        h.sb.share.path().display()
    ));
    assert!(d.text.contains("torch"), "{}", d.text);
    let ran = h.sb.sh(&format!("ls {out} | grep ran-as || true")).text;
    assert_eq!(ran.trim(), "", "the planted module ran: {}", d.text);
    // The same interpreter run as the old doctor ran it does import it: this test can fail.
    let o = h.sb.sh(&format!(
        "cd {out} && /opt/comfyui/current/venv/bin/python -c 'import torch'; ls {out} | grep ran-as"
    ));
    assert!(o.text.contains("ran-as-0"), "{}", o.text);
    assert_eq!(h.sb.sh(&format!("rm -f {out}/ran-as-0")).code, 0);

    // Pre-flight runs as its own account: the service cannot kill it to block an upgrade.
    // The pattern is spelt so the killer's own command line does not match it.
    let marker = "preflight-marker-7f3a";
    let killer = format!(
        "while [ ! -e {out}/stop ]; do pkill -KILL -f 'preflight-marker-7f3[a]'; sleep 0.05; done"
    );
    let q = killer.replace('\'', "'\\''");
    assert_eq!(
        h.sb.sh(&format!(
            "setpriv --reuid comfyui --regid comfyui --groups comfyui,comfyui-users -- sh -c '{q}' >/dev/null 2>&1 &"
        ))
        .code,
        0
    );
    // The killer works on what the service may signal: its own processes.
    let o = h.as_service(
        "M=preflight-marker-7f3; python3 -c \"import time; time.sleep(20)  # ${M}a\"; echo exit=$?",
    );
    assert!(
        o.text.contains("exit=137"),
        "the killer did not kill the service's own process: {}",
        o.text
    );
    let slow = format!("import time; time.sleep(4)  # {marker}");
    let c = h.sb.release(&Release {
        preflight: Some(&slow),
        ..Release::new("c", 3)
    });
    let o = h.sb.ctl(&format!("activate {}", c.display()));
    assert_eq!(o.code, 0, "the service killed the pre-flight: {}", o.text);
    // Whom it ran as: a check that fails and says.
    let who = "import os, sys; sys.exit('uid=%d groups=%s cwd=%s' % (os.getuid(), os.getgroups(), os.getcwd()))";
    let d2 = h.sb.release(&Release {
        preflight: Some(who),
        ..Release::new("d", 4)
    });
    let o = h.sb.ctl(&format!("activate {}", d2.display()));
    assert_eq!(o.code, 1, "{}", o.text);
    let uid = h.sb.sh("id -u comfyui-check").text.trim().to_owned();
    let gid = h.sb.sh("id -g comfyui-check").text.trim().to_owned();
    assert!(
        o.text.contains(&format!("uid={uid} groups=[] cwd=/")),
        "{}",
        o.text
    );
    assert_ne!(uid, h.sb.sh("id -u comfyui").text.trim());
    let _ = gid;
    assert_eq!(h.sb.sh(&format!("touch {out}/stop")).code, 0);
}

#[test]
#[cfg_attr(
    not(feature = "host-privileged"),
    ignore = "needs root and a sandboxed systemd; scripts/test.sh runs it"
)]
fn every_verb_completes_amid_links_fifos_odd_names_and_many_entries() {
    let h = host("");
    let fill = format!(
        "cd {DATA}/output && mkdir many && cd many && seq 1 100000 | xargs touch && cd .. \
         && mkfifo fifo && ln -s / root-link && ln -s /root/victim victim-link \
         && touch \"$(printf 'odd\\nname\\033[2J')\" && mkdir -p deep/a/b/c && ln -s ../../.. deep/a/b/c/loop \
         && mkfifo {DATA}/user/fifo && ln -s /root {DATA}/user/root-link \
         && mkfifo {DATA}/node-state/node_a/fifo && ln -s /etc {DATA}/node-state/node_a/etc-link"
    );
    let o = h.as_service(&fill);
    assert_eq!(o.code, 0, "{}", o.text);
    let before = h.victims();
    let b = h.sb.release(&Release {
        state: vec![("conf.json", "{}")],
        manager: true,
        ..Release::new("b", 2)
    });
    for verb in [
        format!("activate {}", b.display()),
        "rollback".to_owned(),
        format!("activate {}", b.display()),
        "gc".to_owned(),
        "verify".to_owned(),
        "status".to_owned(),
        "releases".to_owned(),
        "health --timeout 20".to_owned(),
        "service restart".to_owned(),
        "diff".to_owned(),
        "setup".to_owned(),
    ] {
        let t = Instant::now();
        let o = h.sb.sh(&format!(
            "timeout 120 {}/comfyctl {verb}",
            h.sb.share.path().display()
        ));
        assert_eq!(o.code, 0, "{verb}: {}", o.text);
        assert!(
            t.elapsed() < Duration::from_secs(100),
            "{verb} took {:?}",
            t.elapsed()
        );
    }
    let o = h.sb.sh(&format!(
        "timeout 120 {}/comfyctl doctor",
        h.sb.share.path().display()
    ));
    assert!(o.code == 0 || o.code == 1, "doctor: {}", o.text);
    assert_eq!(h.victims(), before);
    assert_eq!(
        h.sb.sh(&format!("ls {DATA}/output/many | wc -l"))
            .text
            .trim(),
        "100000"
    );
}

/// A racer as the service renames a group member's folder over the one root just made below a
/// node's state, hoping root hands it over (it won within seconds before root checked what it
/// opened): root must refuse every time it opens a folder that is not its own fresh one.
#[test]
#[cfg_attr(
    not(feature = "host-privileged"),
    ignore = "needs root and a sandboxed systemd; scripts/test.sh runs it"
)]
fn a_folder_renamed_over_a_new_one_is_never_handed_over() {
    let h = host("");
    let dir = h.sb.share.path().display().to_string();
    let st = std::process::Command::new("cc")
        .args(["-O2", "-o"])
        .arg(h.sb.share.path().join("swap_racer"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/swap_racer.c"
        ))
        .status()
        .unwrap();
    assert!(st.success(), "compiling the racer");
    let o = h.as_alice(&format!(
        "umask 002 && mkdir {DATA}/output/alicedir && echo mine > {DATA}/output/alicedir/notes"
    ));
    assert_eq!(o.code, 0, "{}", o.text);
    let alice_before =
        h.sb.sh(&format!("stat -c '%i %U %G %a' {DATA}/output/alicedir"))
            .text;
    // Each restart now stops at the Manager's config, right after making node state: a fast loop
    // with no stop.
    let o = h.as_service(&format!(
        "cd {DATA}/user/default && mv ComfyUI-Manager m.real && ln -s /nonexistent ComfyUI-Manager \
         && rm -r {DATA}/node-state/node_a/sub"
    ));
    assert_eq!(o.code, 0, "{}", o.text);
    let o = h.sb.sh(&format!(
        "setpriv --reuid comfyui --regid comfyui --groups comfyui,comfyui-users -- {dir}/swap_racer \
         {DATA}/node-state/node_a {DATA}/output/alicedir {DATA}/output/racer-stop {DATA}/output/racer-result >/dev/null 2>&1 &"
    ));
    assert_eq!(o.code, 0, "{}", o.text);
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    let mut tries = 0;
    while t.elapsed() < Duration::from_secs(60) && tries < 400 {
        let o = h.sb.sh(&format!(
            "for i in $(seq 1 25); do {dir}/comfyctl service restart >/dev/null 2>&1; echo $?; done"
        ));
        for c in o.text.split_whitespace() {
            // Refused (2), or failed when the racer took a folder away mid-walk (1); never done.
            assert!(c == "2" || c == "1", "a restart went through: {}", o.text);
            tries += 1;
        }
        if h.sb.sh(&format!("test -e {DATA}/output/racer-result")).code == 0 {
            break;
        }
    }
    assert_eq!(
        h.sb.sh(&format!("touch {DATA}/output/racer-stop; sleep 2"))
            .code,
        0
    );
    let result = h.sb.sh(&format!("cat {DATA}/output/racer-result")).text;
    assert!(!result.contains("WON"), "after {tries} restarts: {result}");
    // The racer ran and swapped: it says how often it found root's new folder and renamed over it.
    let swaps: u64 = result
        .split_whitespace()
        .skip_while(|w| *w != "tries")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        result.starts_with("lost: ") && swaps > 0,
        "the racer did not race: {result:?}"
    );
    // Wherever alice's folder is now, it is hers as it was.
    let now = h.sb.sh(&format!(
        "stat -c '%i %U %G %a' {DATA}/output/alicedir 2>/dev/null || stat -c '%i %U %G %a' {DATA}/node-state/node_a/sub"
    ));
    assert_eq!(now.text, alice_before, "after {tries} restarts ({result})");
    assert!(tries >= 100, "only {tries} restarts ran");
    eprintln!("{tries} restarts against the racer: {}", result.trim());
}

/// Release code run by pre-flight cannot outlive its check: a daemon it forks cannot hold
/// comfyctl (and its lock) with its output, kill the next release's check, or write without end.
#[test]
#[cfg_attr(
    not(feature = "host-privileged"),
    ignore = "needs root and a sandboxed systemd; scripts/test.sh runs it"
)]
fn a_checks_processes_end_with_it_and_its_output_is_bounded() {
    let h = host("");
    let daemon = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(3600)\n";
    let p = h.sb.release(&Release {
        preflight: Some(daemon),
        ..Release::new("p", 2)
    });
    let t = Instant::now();
    let o = h.sb.ctl(&format!("activate {}", p.display()));
    assert_eq!(o.code, 0, "{}", o.text);
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "held {:?}",
        t.elapsed()
    );
    assert_eq!(
        h.sb.sh("pgrep -u comfyui-check").text.trim(),
        "",
        "a check's process outlived it"
    );
    // A killer left behind would kill every later check (and its release be recorded failed).
    let killer = "import os, time, signal\nif os.fork() == 0:\n    os.setsid()\n    os.closerange(0, 256)\n    while True:\n        try: os.kill(-1, signal.SIGKILL)\n        except OSError: pass\n        time.sleep(0.05)\n";
    let k = h.sb.release(&Release {
        preflight: Some(killer),
        ..Release::new("k", 3)
    });
    let o = h.sb.ctl(&format!("activate {}", k.display()));
    assert_eq!(o.code, 0, "{}", o.text);
    let slow = "import time; time.sleep(2)";
    let b = h.sb.release(&Release {
        preflight: Some(slow),
        ..Release::new("b", 4)
    });
    let o = h.sb.ctl(&format!("activate {}", b.display()));
    assert_eq!(
        o.code, 0,
        "a leftover of the previous check killed this one: {}",
        o.text
    );
    // 768 MiB of output: comfyctl keeps a bounded part of it.
    let loud = "import sys\nb = b'x' * (1 << 20)\nfor _ in range(768): sys.stdout.buffer.write(b)\nsys.exit(1)\n";
    let l = h.sb.release(&Release {
        preflight: Some(loud),
        ..Release::new("l", 5)
    });
    let o = h.sb.sh(&format!(
        "/usr/bin/time -f maxrss-kib=%M {}/comfyctl activate {} 2>&1",
        h.sb.share.path().display(),
        l.display()
    ));
    let rss: u64 = o
        .text
        .lines()
        .find_map(|l| l.strip_prefix("maxrss-kib="))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        o.text.contains("pre-flight check \"check\" failed"),
        "{}",
        o.text
    );
    assert!(
        rss < 128 * 1024,
        "peak RSS {rss} KiB for 768 MiB of check output"
    );
    assert_eq!(h.sb.current(), id(&b));
}

/// Someone else's program on the app's port answers in its place: not healthy, and an
/// activation is not recorded good on its word.
#[test]
#[cfg_attr(
    not(feature = "host-privileged"),
    ignore = "needs root and a sandboxed systemd; scripts/test.sh runs it"
)]
fn an_answer_from_someone_elses_socket_on_the_port_is_not_the_app() {
    let h = host("");
    assert_eq!(h.sb.ctl("service pause --no-drain").code, 0);
    let squat = "import http.server, json\n\
class H(http.server.BaseHTTPRequestHandler):\n    def do_GET(self):\n        b = {'devices': [{'type': 'cpu'}]} if self.path == '/system_stats' else {'NodeA': {'python_module': 'custom_nodes.node_a'}, 'KSampler': {'python_module': 'nodes'}, 'queue_running': [[1, 'never-ends']], 'queue_pending': []}\n        d = json.dumps(b).encode()\n        self.send_response(200); self.send_header('Content-Length', str(len(d))); self.end_headers(); self.wfile.write(d)\n    def log_message(self, *a): pass\n\
http.server.HTTPServer(('0.0.0.0', 8188), H).serve_forever()\n";
    fs_err::write(h.sb.share.path().join("squat.py"), squat).unwrap();
    let o = h.sb.sh(&format!(
        "setpriv --reuid alice --regid alice --init-groups -- /usr/bin/python3 {}/squat.py >/dev/null 2>&1 & sleep 1",
        h.sb.share.path().display()
    ));
    assert_eq!(o.code, 0, "{}", o.text);
    let o = h.sb.ctl("health --timeout 5");
    assert_eq!(o.code, 1, "{}", o.text);
    assert!(o.text.contains("not by the service user"), "{}", o.text);
    let broken = h.sb.release(&Release {
        broken: true,
        ..Release::new("broken", 2)
    });
    // Its /queue says a job runs forever: not the app's queue, so the stop does not wait on it.
    let t = Instant::now();
    let o = h.sb.ctl(&format!("activate {}", broken.display()));
    assert_eq!(o.code, 1, "{}", o.text);
    assert!(
        t.elapsed() < Duration::from_secs(120),
        "waited on a squatter's queue"
    );
    let st = h.sb.ctl("releases --json").text;
    let v: serde_json::Value = serde_json::from_str(&st).unwrap();
    let b = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id(&broken).as_str())
        .unwrap();
    assert_eq!(b["status"], "failed", "{st}");
}

/// A release that fails after the stop, while the service planted a link where the previous
/// release's Manager config goes: the way back does not depend on it.
#[test]
#[cfg_attr(
    not(feature = "host-privileged"),
    ignore = "needs root and a sandboxed systemd; scripts/test.sh runs it"
)]
fn the_way_back_does_not_depend_on_state_the_service_can_break() {
    let h = host("");
    let broken = h.sb.release(&Release {
        broken: true,
        ..Release::new("broken", 2)
    });
    let o = h.as_service(&format!(
        "cd {DATA}/user/default && mv ComfyUI-Manager m.real && ln -s /root ComfyUI-Manager"
    ));
    assert_eq!(o.code, 0, "{}", o.text);
    let o = h.sb.ctl(&format!("activate {}", broken.display()));
    assert_eq!(o.code, 1, "{}", o.text);
    assert!(o.text.contains("healthy again"), "{}", o.text);
    assert_eq!(h.sb.current(), h.a_id);
    assert!(h.sb.healthy());
    // And group members cannot touch the service's folders at all.
    for a in [
        format!("mv {DATA}/user/default {DATA}/user/d2"),
        format!("touch {DATA}/user/x"),
        format!("touch {DATA}/temp/x"),
    ] {
        assert_ne!(h.as_alice(&a).code, 0, "alice could `{a}`");
    }
}

/// What an older layout let someone leave in root's db/ (a folder named like root's partial
/// copies) is left alone, and blocks nothing.
#[test]
#[cfg_attr(
    not(feature = "host-privileged"),
    ignore = "needs root and a sandboxed systemd; scripts/test.sh runs it"
)]
fn leftovers_named_like_roots_partial_copies_are_left_alone() {
    let h = host("");
    let o = h.sb.sh(&format!(
        "mkdir -p {DATA}/db/.partial-x/default && echo mine > {DATA}/db/.partial-x/top.txt \
         && mkdir -m 700 {DATA}/db/.partial-{}-1 && mkdir {DATA}/db/.partial-{}-1/sub",
        "a".repeat(64),
        "a".repeat(64)
    ));
    assert_eq!(o.code, 0, "{}", o.text);
    let b = h.sb.release(&Release::new("b", 2));
    let o = h.sb.ctl(&format!("activate {}", b.display()));
    assert_eq!(o.code, 0, "{}", o.text);
    assert_eq!(
        h.sb.sh(&format!("cat {DATA}/db/.partial-x/top.txt"))
            .text
            .trim(),
        "mine"
    );
    assert_eq!(
        h.sb.sh(&format!(
            "test -d {DATA}/db/.partial-{}-1/sub",
            "a".repeat(64)
        ))
        .code,
        0
    );
}
