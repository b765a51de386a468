//! Activation benchmark, figures side by side in one run: first activation vs `zstd -dc | tar -xf -`
//! of the same content; a second bundle differing by one custom node (time and disk growth); rollback
//! flip latency. `cargo run --release -p activator --example activation_bench -- [MIB] [FILES]`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn du(p: &Path) -> u64 {
    let out = Command::new("du")
        .args(["-s", "-B1"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn node(tree: &Path, tag: &str) -> u64 {
    let dir = tree.join("ComfyUI/custom_nodes/ComfyUI-KJNodes");
    let _ = fs_err::remove_dir_all(&dir);
    fs_err::create_dir_all(&dir).unwrap();
    let mut total = 0;
    for i in 0..60 {
        let body = format!("# {tag} node file {i}\nclass Node{i}:\n    pass\n").repeat(400);
        total += body.len() as u64;
        fs_err::write(dir.join(format!("n{i:02}.py")), body).unwrap();
    }
    total
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: u64 = args.get(1).map_or(1024, |s| s.parse().unwrap());
    let files: u64 = args.get(2).map_or(30_000, |s| s.parse().unwrap());
    let work = PathBuf::from(
        std::env::var("BENCH_DIR").unwrap_or_else(|_| "target/activation-bench".into()),
    );
    let _ = Command::new("rm").arg("-rf").arg(&work).status();
    fs_err::create_dir_all(&work).unwrap();
    let tree = work.join("tree");
    bundle::testing::venv_like_tree(&tree, mib, files);
    let key = keys::generate();
    let opts = bundle::PackOptions::default();
    let mut m = bundle::testing::template();
    m.name = "bench".into();
    node(&tree, "a");
    let a = work.join("a.bundle");
    bundle::pack(&tree, m.clone(), &key, &a, &opts, &|_, _| {}).unwrap();
    let changed = node(&tree, "b");
    m.sequence = 2;
    let b = work.join("b.bundle");
    bundle::pack(&tree, m, &key, &b, &opts, &|_, _| {}).unwrap();
    let stock = work.join("stock.tar.zst");
    assert!(Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -cf - -C {} . | zstd -q -3 -T0 -o {}",
            tree.display(),
            stock.display()
        ))
        .status()
        .unwrap()
        .success());

    let root = work.join("root");
    fs_err::create_dir_all(root.join("etc/comfyui/keys")).unwrap();
    fs_err::write(
        root.join("etc/comfyui/keys/bench.pub"),
        key.public().to_file_string(),
    )
    .unwrap();
    fs_err::write(
        root.join("etc/comfyui/comfyctl.toml"),
        "target = \"linux-x86_64-cpu\"\n",
    )
    .unwrap();
    let host = activator::Host::open(&root, None).unwrap();
    let aopts = activator::ActivateOptions {
        allow_downgrade: false,
        service: false,
        jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
        drain: Default::default(),
    };

    let x = work.join("x-stock");
    fs_err::create_dir(&x).unwrap();
    let t = Instant::now();
    assert!(Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zstd -dc {} | tar -xf - -C {}",
            stock.display(),
            x.display()
        ))
        .status()
        .unwrap()
        .success());
    let stock_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    assert!(Command::new("sync")
        .arg("-f")
        .arg(&x)
        .status()
        .unwrap()
        .success());
    let stock_sync_s = stock_s + t.elapsed().as_secs_f64();

    let t = Instant::now();
    let r1 = activator::activate(&host, a.to_str().unwrap(), &aopts).unwrap();
    let first_s = t.elapsed().as_secs_f64();
    let before = du(&root.join("opt/comfyui"));
    // Another writer's dirty pages on the same filesystem (ComfyUI saving outputs, a download):
    // BENCH_DIRTY_MB of them, written just before the second activation and not synced.
    let dirty_mb: u64 = std::env::var("BENCH_DIRTY_MB").map_or(2048, |v| v.parse().unwrap());
    let dirty = work.join("dirty.bin");
    {
        use std::io::Write as _;
        let mut f = fs_err::File::create(&dirty).unwrap();
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..dirty_mb {
            f.write_all(&chunk).unwrap();
        }
    }
    let t = Instant::now();
    let r2 = activator::activate(&host, b.to_str().unwrap(), &aopts).unwrap();
    let second_s = t.elapsed().as_secs_f64();
    let _ = fs_err::remove_file(&dirty);
    let growth = du(&root.join("opt/comfyui")) - before;

    let mut flips = Vec::new();
    let mut whole = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let r = activator::rollback(&host, None, false, &Default::default()).unwrap();
        whole.push(t.elapsed().as_secs_f64() * 1000.0);
        flips.push(r.flip_ms);
    }
    flips.sort_by(f64::total_cmp);
    whole.sort_by(f64::total_cmp);

    // Verify, warm, beside stock sha256sum on every core over the stock extraction of the tree.
    let bytes = r1.bytes_written + r1.bytes_reused;
    let mut ours = f64::MAX;
    let mut stock_v = f64::MAX;
    for _ in 0..2 {
        let t = Instant::now();
        let v = activator::verify(&host, None).unwrap();
        assert!(v.ok);
        ours = ours.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        assert!(Command::new("sh")
            .arg("-c")
            .arg(format!(
                "find {} -type f -print0 | xargs -0 -P {} -n 256 sha256sum >/dev/null",
                x.display(),
                aopts.jobs
            ))
            .status()
            .unwrap()
            .success());
        stock_v = stock_v.min(t.elapsed().as_secs_f64());
    }

    println!("tree: {mib} MiB, {files} small files + 12 blobs; second bundle changes one custom node ({changed} bytes in 60 files)");
    println!("{:<44} {:>9}", "", "seconds");
    println!(
        "{:<44} {:>9.2}",
        "zstd -dc | tar -xf - (verifies nothing)", stock_s
    );
    println!("{:<44} {:>9.2}", "  ... followed by sync -f", stock_sync_s);
    println!(
        "{:<44} {:>9.2}   ({} files written, syncfs)",
        "comfyctl activate, first", first_s, r1.files_written
    );
    println!(
        "{:<44} {:>9.2}   ({} files written, {} reused, {} of {} frames read)",
        "comfyctl activate, one node changed",
        second_s,
        r2.files_written,
        r2.files_reused,
        r2.frames_read,
        r2.frames_total
    );
    println!(
        "first activation: {:.2}x stock extract, {:.2}x stock extract + sync (target <= 0.8x)",
        first_s / stock_s,
        first_s / stock_sync_s
    );
    println!(
        "second activation: {:.3}x the first (target <= 0.1x), with {dirty_mb} MiB of another writer's dirty pages on the disk (BENCH_DIRTY_MB) for its syncfs to wait for",
        second_s / first_s
    );
    println!(
        "disk growth: {growth} bytes for {changed} changed bytes = {:.2}x (target <= 1.05x)",
        growth as f64 / changed as f64
    );
    let mb = bundle::Bundle::open_unverified(&b).unwrap();
    let dirs = mb
        .manifest
        .files
        .iter()
        .filter(|e| e.kind == bundle::Kind::Dir)
        .count() as u64;
    let fixed = dirs * 4096 + mb.manifest_bytes.len() as u64;
    println!(
        "  of which {dirs} directories ({} bytes, a block each: directories cannot be hardlinked) and the kept manifest ({} bytes); the rest: {} bytes = {:.2}x",
        dirs * 4096,
        mb.manifest_bytes.len(),
        growth.saturating_sub(fixed),
        growth.saturating_sub(fixed) as f64 / changed as f64
    );
    println!(
        "verify (warm, best of 2): {ours:.2} s = {:.2} GB/s; `find | xargs -P{} sha256sum` {stock_v:.2} s = {:.2} GB/s; ratio {:.2}x (target >= 1.5 GB/s)",
        bytes as f64 / ours / 1e9,
        aopts.jobs,
        bytes as f64 / stock_v / 1e9,
        ours / stock_v
    );
    println!(
        "rollback: flip median {:.3} ms, max {:.3} ms; whole rollback median {:.1} ms (target flip <= 10 ms)",
        flips[flips.len() / 2],
        flips[flips.len() - 1],
        whole[whole.len() / 2]
    );
}
