//! Format benchmark: pack and verify+extract a venv-shaped tree, side by side with stock
//! `tar | zstd -3 -T0` and `zstd -dc | tar -x` in the same run, with peak RSS of each (GNU time).
//! Figures, not a timed test: `cargo run --release -p bundle --example format_bench -- [MIB] [FILES]`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn timed(cmd: &mut Command) -> (f64, u64) {
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("TIME %e %M")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?} failed: {err}", cmd);
    let line = err.lines().rfind(|l| l.starts_with("TIME ")).unwrap();
    let mut it = line.split_whitespace().skip(1);
    (
        it.next().unwrap().parse().unwrap(),
        it.next().unwrap().parse().unwrap(),
    )
}

fn sh(script: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(script);
    c
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let me = std::env::current_exe().unwrap();
    match args.get(1).map(String::as_str) {
        Some("pack") => {
            let key = keys::SecretKey::load(Path::new(&args[4])).unwrap();
            let mut m = bundle::testing::template();
            m.name = "bench".into();
            bundle::pack(
                Path::new(&args[2]),
                m,
                &key,
                Path::new(&args[3]),
                &Default::default(),
                &|_, _| {},
            )
            .unwrap();
            return;
        }
        Some("extract") => {
            let pk = keys::PublicKey::load(Path::new(&args[3])).unwrap();
            let b = bundle::Bundle::open(
                Path::new(&args[2]),
                &keys::TrustedKeys::new(vec![pk], vec![]),
            )
            .unwrap();
            let opts = bundle::ExtractOptions {
                sync: false,
                ..Default::default()
            };
            b.extract(Path::new(&args[4]), &opts, &|_| {}).unwrap();
            return;
        }
        _ => {}
    }
    let mib: u64 = args.get(1).map_or(1024, |s| s.parse().unwrap());
    let files: u64 = args.get(2).map_or(30_000, |s| s.parse().unwrap());
    let work =
        PathBuf::from(std::env::var("BENCH_DIR").unwrap_or_else(|_| "target/format-bench".into()));
    let tree = work.join(format!("tree-{mib}-{files}"));
    if !tree.exists() {
        eprintln!("generating {mib} MiB, {files} files in {}", tree.display());
        let tmp = work.join("tree.tmp");
        let _ = fs_err::remove_dir_all(&tmp);
        bundle::testing::venv_like_tree(&tmp, mib, files);
        fs_err::rename(&tmp, &tree).unwrap();
    }
    let key = work.join("bench.key");
    if !key.exists() {
        keys::write_keypair(&keys::generate(), &work.join("bench")).unwrap();
    }
    let (ours_b, stock_b) = (work.join("ours.bundle"), work.join("stock.tar.zst"));
    let (mut p_ours, mut p_stock, mut x_ours, mut x_stock) = (vec![], vec![], vec![], vec![]);
    for _ in 0..2 {
        let _ = fs_err::remove_file(&ours_b);
        let _ = fs_err::remove_file(&stock_b);
        p_ours.push(timed(
            Command::new(&me)
                .arg("pack")
                .arg(&tree)
                .arg(&ours_b)
                .arg(&key),
        ));
        p_stock.push(timed(&mut sh(&format!(
            "tar -cf - -C {} . | zstd -q -3 -T0 -o {}",
            tree.display(),
            stock_b.display()
        ))));
        for d in ["x-ours", "x-stock"] {
            let _ = bundle::make_writable_and_remove(&work.join(d));
        }
        x_ours.push(timed(
            Command::new(&me)
                .arg("extract")
                .arg(&ours_b)
                .arg(work.join("bench.pub"))
                .arg(work.join("x-ours")),
        ));
        fs_err::create_dir(work.join("x-stock")).unwrap();
        x_stock.push(timed(&mut sh(&format!(
            "zstd -dc {} | tar -xf - -C {}",
            stock_b.display(),
            work.join("x-stock").display()
        ))));
    }
    let best = |v: &[(f64, u64)]| {
        v.iter()
            .fold((f64::MAX, 0u64), |a, b| (a.0.min(b.0), a.1.max(b.1)))
    };
    let (po, ps, xo, xs) = (best(&p_ours), best(&p_stock), best(&x_ours), best(&x_stock));
    let size = |p: &Path| fs_err::metadata(p).unwrap().len() as f64 / (1 << 20) as f64;
    println!("tree: {mib} MiB, {files} small files + 12 blobs + {} symlinks; best of 2, warm page cache, no fsync either side", files / 10);
    println!(
        "{:<28} {:>9} {:>12} {:>10}",
        "", "seconds", "peak RSS MiB", "size MiB"
    );
    println!(
        "{:<28} {:>9.2} {:>12.1} {:>10.1}",
        "pack (ours, sha256+zstd)",
        po.0,
        po.1 as f64 / 1024.0,
        size(&ours_b)
    );
    println!(
        "{:<28} {:>9.2} {:>12.1} {:>10.1}",
        "tar -c | zstd -3 -T0",
        ps.0,
        ps.1 as f64 / 1024.0,
        size(&stock_b)
    );
    println!(
        "{:<28} {:>9.2} {:>12.1}",
        "verify+extract (ours)",
        xo.0,
        xo.1 as f64 / 1024.0
    );
    println!(
        "{:<28} {:>9.2} {:>12.1}",
        "zstd -dc | tar -x",
        xs.0,
        xs.1 as f64 / 1024.0
    );
    println!("pack ratio {:.2}x stock (target <= 0.7x); verify+extract ratio {:.2}x stock (target <= 0.8x)", po.0 / ps.0, xo.0 / xs.0);
}
