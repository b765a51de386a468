//! `comfyctl health` against a ComfyUI-shaped server on loopback, and the refusal to pretend a
//! service restart happened.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;

/// Reads one request's head; returns its first line.
fn read_request(s: &std::net::TcpStream) -> String {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut first = String::new();
    r.read_line(&mut first).unwrap();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
            break;
        }
    }
    first
}

/// Answers /system_stats with `device` and /object_info with `classes` (class, python_module).
fn serve(device: &'static str, classes: &'static [(&'static str, &'static str)]) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let first = read_request(&s);
            let body = if first.contains("/system_stats") {
                format!("{{\"system\":{{}},\"devices\":[{{\"type\":\"{device}\"}}]}}")
            } else {
                let parts: Vec<String> = classes
                    .iter()
                    .map(|(c, m)| format!("\"{c}\":{{\"python_module\":\"{m}\"}}"))
                    .collect();
                format!("{{{}}}", parts.join(","))
            };
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn health_checks_device_and_expected_nodes() {
    let h = TestHost::new();
    let b = h.bundle("1.0", 1, &Tree::demo("a"));
    h.activate_ok(&b);

    let ok = serve(
        "cpu",
        &[("KSampler", "nodes"), ("NodeA", "custom_nodes.node_a")],
    );
    let out = h.ctl(&["health", "--port", &ok.to_string(), "--json"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.json()["healthy"], true);

    let missing = serve("cpu", &[("KSampler", "nodes")]);
    let out = h.ctl(&["health", "--port", &missing.to_string()]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout
            .contains("custom node node_a: 1 of 1 classes missing (NodeA): it did not import"),
        "{}",
        out.stdout
    );

    // The class exists but comes from another module: not the node the manifest expects.
    let wrong_module = serve("cpu", &[("NodeA", "custom_nodes.other")]);
    assert_eq!(
        h.ctl(&["health", "--port", &wrong_module.to_string()]).code,
        1
    );

    let gpu = serve("cuda", &[("NodeA", "custom_nodes.node_a")]);
    let out = h.ctl(&["health", "--port", &gpu.to_string()]);
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("expected \"cpu\""), "{}", out.stdout);
    assert_eq!(
        h.ctl(&["health", "--port", &gpu.to_string(), "--device", "cuda"])
            .code,
        0
    );

    let nobody = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = h.ctl(&["health", "--port", &nobody.to_string(), "--timeout", "1"]);
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("nothing answers"), "{}", out.stdout);
}

#[test]
fn a_service_that_cannot_start_is_rolled_back() {
    // No systemd runs here: starting the unit fails, and the host goes back to the previous release.
    let h = TestHost::new();
    // A service user this machine has, so everything before the start is prepared.
    h.config_tail("[service]\nuser = \"root\"\ngroup = \"root\"");
    let a = h.bundle("1.0", 1, &Tree::demo("a"));
    let b = h.bundle("1.1", 2, &Tree::demo("b"));
    h.activate_ok(&a);
    let out = h.ctl(&["activate", b.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("was unhealthy") && out.stderr.contains("rolled back to"),
        "{}",
        out.stderr
    );
    assert_eq!(h.current(), Some(h.id_of(&a)));
    let rows = h.ctl(&["releases", "--json"]).json()["items"].clone();
    assert!(rows
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["id"] == h.id_of(&b).as_str() && r["status"] == "failed"));
}

/// Answers every request with a body of `size` bytes of `{` padding, declaring its length or not.
fn serve_huge(size: u64, declare: bool) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            read_request(&s);
            let head = if declare {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n")
            } else {
                "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_owned()
            };
            std::thread::spawn(move || {
                if s.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let chunk = vec![b' '; 1 << 20];
                let mut sent = 0;
                while sent < size {
                    if s.write_all(&chunk).is_err() {
                        return;
                    }
                    sent += chunk.len() as u64;
                }
            });
        }
    });
    port
}

/// An app (third-party code runs in it) answering with a gigabyte: root's comfyctl reads at most
/// 16 MiB of it and refuses, in little memory (issue 22: a 1 GiB answer took it to about 1 GB).
#[test]
fn a_huge_answer_from_the_app_is_refused_in_bounded_memory() {
    let h = TestHost::new();
    let b = h.bundle("1.0", 1, &Tree::demo("a"));
    h.activate_ok(&b);
    for declare in [true, false] {
        let port = serve_huge(1 << 30, declare);
        let o = std::process::Command::new("/usr/bin/time")
            .args(["-f", "maxrss-kib=%M"])
            .arg(env!("CARGO_BIN_EXE_comfyctl"))
            .arg("--root")
            .arg(&h.root)
            .args(["health", "--port", &port.to_string(), "--timeout", "20"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("/system_stats") && err.contains("16777216 byte limit"),
            "declared length {declare}: {err}"
        );
        let rss: u64 = err
            .lines()
            .find_map(|l| l.strip_prefix("maxrss-kib="))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(rss < 96 * 1024, "peak RSS {rss} KiB reading a 1 GiB answer");
    }
}

/// 15 MiB of tiny JSON objects: under the byte limit, but parsed they would take gigabytes; the
/// answer is refused by its count of values, in little memory.
#[test]
fn an_answer_of_millions_of_tiny_values_is_refused_in_bounded_memory() {
    let h = TestHost::new();
    let b = h.bundle("1.0", 1, &Tree::demo("a"));
    h.activate_ok(&b);
    let mut body = b"{\"devices\": [".to_vec();
    while body.len() < 15 << 20 {
        body.extend_from_slice(b"{\"\":0},");
    }
    body.extend_from_slice(b"{}]}");
    let body: &'static [u8] = Box::leak(body.into_boxed_slice());
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            read_request(&s);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(body);
        }
    });
    let o = std::process::Command::new("/usr/bin/time")
        .args(["-f", "maxrss-kib=%M"])
        .arg(env!("CARGO_BIN_EXE_comfyctl"))
        .arg("--root")
        .arg(&h.root)
        .args(["health", "--port", &port.to_string(), "--timeout", "20"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("JSON values"), "{err}");
    let rss: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("maxrss-kib="))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(rss < 96 * 1024, "peak RSS {rss} KiB");
}
