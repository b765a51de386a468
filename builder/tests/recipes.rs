//! Every recipe in recipes/ parses and validates, and the DGX Spark recipe plans what the seed does.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn every_recipe_parses_and_validates() {
    let mut n = 0;
    for e in fs_err::read_dir(repo().join("recipes")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let (r, bytes) = builder::recipe::Recipe::load(&p).unwrap();
            builder::plan::Plan::new(r, &p, &bytes).unwrap();
            n += 1;
        }
    }
    assert!(n >= 2);
}

#[test]
fn unknown_keys_are_named() {
    let text = fs_err::read_to_string(repo().join("recipes/demo.toml"))
        .unwrap()
        .replace("[torch]\n", "[torch]\ncuda_version = \"13.0\"\n");
    let err = builder::recipe::Recipe::parse(&text).unwrap_err();
    assert!(format!("{err:#}").contains("cuda_version"), "{err:#}");
}

#[test]
fn arch_list_121_is_refused() {
    let text = fs_err::read_to_string(repo().join("recipes/dgx-spark.toml"))
        .unwrap()
        .replace("arch_list = \"12.1\"", "arch_list = \"121\"");
    let r = builder::recipe::Recipe::parse(&text).unwrap();
    let err = builder::plan::Plan::new(r, Path::new("x.toml"), text.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("write `12.1`"), "{err}");
}

#[test]
fn a_launch_env_key_that_is_not_a_variable_name_is_refused() {
    let text = fs_err::read_to_string(repo().join("recipes/dgx-spark.toml"))
        .unwrap()
        .replace(
            "env = { CUDA_HOME",
            "env = { \"X; touch /tmp/p\" = \"1\", CUDA_HOME",
        );
    let r = builder::recipe::Recipe::parse(&text).unwrap();
    let err = builder::plan::Plan::new(r, Path::new("x.toml"), text.as_bytes()).unwrap_err();
    assert!(
        err.to_string()
            .contains("launch.env key \"X; touch /tmp/p\" is not an environment variable name"),
        "{err}"
    );
}

#[test]
fn dgx_spark_dry_run_plans_the_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_comfy-build"))
        .args([
            "build",
            "recipes/dgx-spark.toml",
            "--dry-run",
            "--json",
            "--out",
        ])
        .arg(tmp.path().join("out"))
        .arg("--cache")
        .arg(tmp.path().join("cache"))
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["bundle"]["target"], "linux-aarch64-cu130-sm_121");
    assert_eq!(v["bundle"]["device_type"], "cuda");
    assert_eq!(v["torch"]["pins"][0], "torch==2.9.1+cu130");
    assert_eq!(
        v["torch"]["index_url"],
        "https://download.pytorch.org/whl/cu130"
    );
    assert_eq!(v["arch_list"], "12.1");
    assert_eq!(v["cuda_home"], "/usr/local/cuda-13.0");
    let launch: Vec<&str> = v["launch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    for f in [
        "--disable-xformers",
        "--use-sage-attention",
        "--gpu-only",
        "--bf16-unet",
        "--bf16-vae",
        "--bf16-text-enc",
    ] {
        assert!(launch.contains(&f), "{f} missing from {launch:?}");
    }
    let sources = v["sources"].as_array().unwrap();
    let comfy = sources.iter().find(|s| s["role"] == "comfyui").unwrap();
    assert_eq!(comfy["rev"], "a125cd84b054a57729b5eecab930ca9408719832");
    assert!(sources.iter().filter(|s| s["role"] == "node").count() >= 5);
    let sage = sources
        .iter()
        .find(|s| s["name"] == "sageattention")
        .unwrap();
    assert_eq!(sage["rev"], "d1a57a546c3d395b1ffcbeecc66d81db76f3b4b5");
    // The custom nodes are pinned as a set known to work with v0.3.64 (FACTS.md, ../shared/upstream).
    for (name, rev) in [
        (
            "ComfyUI-Manager",
            "c792f9277cdab9f754ca02f35eabf9304af2b89b",
        ),
        (
            "ComfyUI-KJNodes",
            "3fcd22f2fe2be69c3229f192362b91888277cbcb",
        ),
        ("rgthree-comfy", "2b9eb36d3e1741e88dbfccade0e08137f7fa2bfb"),
        (
            "ComfyUI-Custom-Scripts",
            "f2838ed5e59de4d73cde5c98354b87a8d3200190",
        ),
        (
            "ComfyUI_essentials",
            "33ff89fd354d8ec3ab6affb605a79a931b445d99",
        ),
    ] {
        let node = sources.iter().find(|s| s["name"] == name).unwrap();
        assert_eq!(node["rev"], rev, "{name}");
    }
    let stages = v["stages"].as_array().unwrap();
    let cmd = |name: &str| {
        stages.iter().find(|s| s["stage"] == name).unwrap()["commands"][0]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(cmd("extension sageattention").contains("TORCH_CUDA_ARCH_LIST=12.1"));
    assert!(cmd("extension sageattention").contains("--no-build-isolation"));
    assert!(cmd("extension flash-attention").contains("FLASH_ATTN_CUDA_ARCHS=120"));
    assert!(cmd("extension flash-attention").contains("FLASH_ATTENTION_FORCE_BUILD=TRUE"));
    assert!(cmd("extension torchao").contains("torchao==0.15.0"));
    assert!(cmd("extension torchao").contains("TRITON_PTXAS_PATH=/usr/local/cuda-13.0/bin/ptxas"));
    assert!(
        stages.iter().all(|s| s["cached"] != true),
        "nothing can be cached in a fresh cache"
    );
    assert!(
        !tmp.path().join("cache/git").exists(),
        "a dry run fetches nothing"
    );
}

fn doctor(recipe_text: &str) -> (i32, serde_json::Value) {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("r.toml");
    fs_err::write(&p, recipe_text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_comfy-build"))
        .arg("doctor")
        .arg(&p)
        .arg("--json")
        .arg("--cache")
        .arg(tmp.path().join("cache"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap(),
    )
}

fn check<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {v}"))
}

#[test]
fn build_doctor_reports_missing_nvcc_and_a_bad_arch_spelling() {
    let demo = fs_err::read_to_string(repo().join("recipes/demo.toml")).unwrap();
    let cuda = demo
        .replace("cuda = \"\"", "cuda = \"13.0\"")
        .replace("cuda_home = \"\"", "cuda_home = \"/nonexistent/cuda-13.0\"");
    let (code, v) = doctor(&cuda);
    assert_eq!(code, 1);
    let nvcc = check(&v, "nvcc");
    assert_eq!(nvcc["status"], "fail");
    assert!(
        nvcc["fix"]
            .as_str()
            .unwrap()
            .contains("install the CUDA 13.0 toolkit"),
        "{nvcc}"
    );
    // Everything else is reported as it really is: this machine has git and a compiler.
    assert_eq!(check(&v, "git")["status"], "ok");
    assert_eq!(check(&v, "gcc")["status"], "ok");
    assert_eq!(
        check(&v, "platform")["status"],
        "ok",
        "this host builds its own platform"
    );
    // A recipe for the other machine: said first, with the fix.
    let other = if std::env::consts::ARCH == "aarch64" {
        "linux-x86_64"
    } else {
        "linux-aarch64"
    };
    let (code, v) = doctor(&demo.replace(
        "platform = \"linux-x86_64\"",
        &format!("platform = \"{other}\""),
    ));
    assert_eq!(code, 1);
    let p = check(&v, "platform");
    assert_eq!(p["status"], "fail", "{p}");
    assert!(p["fix"].as_str().unwrap().contains(other), "{p}");
    // A distribution's Python: its prefix is /usr, which embedded mode would copy whole.
    let distro = demo
        .replace("version = \"3.12\"", "version = \"3.11\"")
        .replace("path = \"python3.12\"", "path = \"/usr/bin/python3\"");
    assert!(distro.contains("/usr/bin/python3"));
    let (code, v) = doctor(&distro);
    assert_eq!(code, 1);
    let py = check(&v, "python");
    assert_eq!(py["status"], "fail", "{py}");
    assert!(
        py["saw"]
            .as_str()
            .unwrap()
            .contains("/usr is a system prefix"),
        "{py}"
    );
    let (_, v) = doctor(&demo.replace("arch_list = \"\"", "arch_list = \"121\""));
    let arch = check(&v, "arch list");
    assert_eq!(arch["status"], "fail");
    assert!(arch["fix"].as_str().unwrap().contains("12.1"), "{arch}");
}

#[test]
fn committed_locks_match_their_recipes() {
    for name in ["demo.toml", "comfyui-cpu.toml", "comfyui-cu130-sage.toml"] {
        let p = repo().join("recipes").join(name);
        let (r, bytes) = builder::recipe::Recipe::load(&p).unwrap();
        let plan = builder::plan::Plan::new(r, &p, &bytes).unwrap();
        let lock = builder::lock::Lock::load(&plan.lock_path())
            .unwrap()
            .unwrap_or_else(|| panic!("{name} has no lock"));
        assert_eq!(lock.stale_reason(&plan), None, "{name}");
    }
}

/// A toolkit from wheels is checked like a system one: the compiler against torch's CUDA, its
/// companions at the compiler's release (a newer crt beside nvcc 13.0 makes ptxas refuse its
/// output), and the lock.
#[test]
fn build_doctor_checks_a_toolkit_from_wheels() {
    let sage = fs_err::read_to_string(repo().join("recipes/comfyui-cu130-sage.toml")).unwrap();
    let (_, v) = doctor(&sage);
    assert_eq!(check(&v, "nvcc")["status"], "ok", "{v}");
    assert_eq!(check(&v, "toolkit wheels")["status"], "ok", "{v}");
    let newer_crt = sage.replace("nvidia-cuda-crt==13.0.88", "nvidia-cuda-crt==13.5.37");
    let (code, v) = doctor(&newer_crt);
    assert_eq!(code, 1);
    let t = check(&v, "toolkit wheels");
    assert_eq!(t["status"], "fail", "{t}");
    assert!(
        t["fix"].as_str().unwrap().contains("Unsupported .version"),
        "{t}"
    );
    let other_cuda = sage.replace("nvidia-cuda-nvcc==13.0.88", "nvidia-cuda-nvcc==12.9.86");
    let (_, v) = doctor(&other_cuda);
    assert_eq!(check(&v, "nvcc")["status"], "fail", "{v}");
    // Both toolkits at once is refused by name.
    let both = sage.replace(
        "arch_list = \"12.1\"",
        "arch_list = \"12.1\"\ncuda_home = \"/usr/local/cuda-13.0\"",
    );
    let p = tempfile::tempdir().unwrap();
    let f = p.path().join("r.toml");
    fs_err::write(&f, both).unwrap();
    let (r, bytes) = builder::recipe::Recipe::load(&f).unwrap();
    let e = builder::plan::Plan::new(r, &f, &bytes)
        .unwrap_err()
        .to_string();
    assert!(e.contains("target.cuda_home and [toolkit]"), "{e}");
}
