//! comfyctl under a real systemd, booted as PID 1 of a sandbox (tests/sandbox/boot.sh): the unit,
//! health checks, automatic rollback, restarts after kill -9, the lifecycle verbs, NFS mappings,
//! per-release databases and nuke. Needs root (as `.ci/run` runs); it fails, never skips, without.
#![allow(clippy::unwrap_used)]

mod sandbox;

use sandbox::*;
use std::time::{Duration, Instant};

#[test]
#[cfg_attr(
    not(feature = "host-privileged"),
    ignore = "needs root and a sandboxed systemd; scripts/test.sh runs it"
)]
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
#[cfg_attr(
    not(feature = "host-privileged"),
    ignore = "needs root and a sandboxed systemd; scripts/test.sh runs it"
)]
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
    assert_eq!(sb.ctl("health --port 8188 --timeout 1").code, 1);
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

/// Every verb that stops the unit waits for the app's jobs first (issue 26), saying what it waits
/// for; past the timeout it refuses and the old release keeps serving.
#[test]
#[cfg_attr(
    not(feature = "host-privileged"),
    ignore = "needs root and a sandboxed systemd; scripts/test.sh runs it"
)]
fn a_stop_waits_for_the_apps_jobs() {
    let sb = Sandbox::boot("");
    let a = sb.bundle("a", 1, 1, &["NodeA"], &["NodeA"], false);
    let b = sb.bundle("b", 2, 1, &["NodeA"], &["NodeA"], false);
    assert_eq!(sb.ctl(&format!("activate {}", a.display())).code, 0);
    let q = "/opt/comfyui/data/output/queue.json";
    let jobs = |running: usize, pending: usize| {
        let job = "[1, \"id\", {}, {}, []]";
        let list = |n: usize| vec![job; n].join(", ");
        let o = sb.sh(&format!(
            "echo '{{\"queue_running\": [{}], \"queue_pending\": [{}]}}' > {q}",
            list(running),
            list(pending)
        ));
        assert_eq!(o.code, 0, "{}", o.text);
    };
    jobs(1, 1);
    let pid = sb.main_pid();
    let o = sb.ctl(&format!("activate {} --drain-timeout 2", b.display()));
    assert_eq!(o.code, 2, "{}", o.text);
    assert!(
        o.text.contains("still has 1 running and 1 pending job(s)"),
        "{}",
        o.text
    );
    assert_eq!(sb.current(), id(&a));
    assert_eq!(sb.main_pid(), pid, "a refused drain stopped the service");
    let o = sb.ctl("service pause --drain-timeout 1");
    assert_eq!(o.code, 2, "{}", o.text);
    assert_eq!(sb.sh("systemctl is-active comfyui").text.trim(), "active");

    // Waits while jobs run, then goes on by itself once they are done.
    let dir = sb.share.path().display().to_string();
    let o = sb.sh(&format!(
        "({dir}/comfyctl activate {} --json > {dir}/act.json 2> {dir}/act.err; echo $? > {dir}/act.code) >/dev/null 2>&1 &",
        b.display()
    ));
    assert_eq!(o.code, 0, "{}", o.text);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sb.current(), id(&a), "switched while a job ran");
    assert_eq!(sb.main_pid(), pid);
    let err = fs_err::read_to_string(sb.share.path().join("act.err")).unwrap();
    assert!(
        err.contains("draining: waiting for 1 running and 1 pending job(s)"),
        "{err}"
    );
    jobs(0, 1);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        sb.current(),
        id(&a),
        "the queue policy waits for pending jobs too"
    );
    jobs(0, 0);
    let t = Instant::now();
    while !sb.share.path().join("act.code").exists() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the activation did not go on"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let code = fs_err::read_to_string(sb.share.path().join("act.code")).unwrap();
    assert_eq!(
        code.trim(),
        "0",
        "{}",
        fs_err::read_to_string(sb.share.path().join("act.err")).unwrap()
    );
    let v: serde_json::Value =
        serde_json::from_str(&fs_err::read_to_string(sb.share.path().join("act.json")).unwrap())
            .unwrap();
    assert_eq!(v["drain"]["running_at_start"], 1, "{v}");
    assert_eq!(v["drain"]["pending_at_start"], 1, "{v}");
    assert!(v["drain"]["waited_seconds"].as_f64().unwrap() >= 5.0, "{v}");
    let down = v["health"]["downtime_seconds"].as_f64().unwrap();
    assert!(down > 0.0 && down < 20.0, "{v}");
    assert_eq!(sb.current(), id(&b));

    // `running`: pending jobs are not waited for; --no-drain: nothing is.
    sb.write_config("[service]\nuser = \"root\"\ngroup = \"root\"\ndrain = \"running\"\n[health]\ntimeout_secs = 20\n");
    jobs(0, 3);
    let o = sb.ctl("rollback --json");
    assert_eq!(o.code, 0, "{}", o.text);
    assert!(o.text.contains("\"waited_seconds\": 0."), "{}", o.text);
    jobs(1, 0);
    let t = Instant::now();
    let o = sb.ctl("service restart --no-drain");
    assert_eq!(o.code, 0, "{}", o.text);
    assert!(t.elapsed() < Duration::from_secs(15));
    assert!(sb.healthy());
}
