//! An operator's workflows (ComfyUI's API format: `{"3": {"class_type": ..., "inputs": {...}}}`)
//! as checks against a running app: every node class exists in `/object_info`, every required
//! input is given, literal values fit their input's type, range and choices, links come from an
//! output of the input's type. A choice that names a model file (`*.safetensors`, ...) depends on
//! the host's models: the build accepts it and records it, the host checks it against the live
//! app's list. A workflow marked to run is queued through `/prompt` and must finish in `/history`
//! without error.

use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use std::time::{Duration, Instant};

/// What checking one workflow found.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Checked {
    /// One message per problem: `node 3 (KSampler): ...`.
    pub problems: Vec<String>,
    /// Model files the workflow names that the app does not list (`ckpt_name = x.safetensors`).
    pub missing_models: Vec<String>,
    pub nodes: usize,
}

const MODEL_EXTENSIONS: [&str; 9] = [
    ".safetensors",
    ".ckpt",
    ".pt",
    ".pth",
    ".bin",
    ".gguf",
    ".sft",
    ".onnx",
    ".pt2",
];

/// A value that names a model file, found in the host's model folders rather than in the release.
pub fn is_model_file(v: &str) -> bool {
    let l = v.to_ascii_lowercase();
    MODEL_EXTENSIONS.iter().any(|e| l.ends_with(e))
}

/// Parses a workflow file's text; refuses the UI format (a `nodes` array) with what to do.
pub fn parse(text: &str) -> Result<serde_json::Map<String, Value>> {
    let v: Value = serde_json::from_str(text).context("not JSON")?;
    let Some(obj) = v.as_object() else {
        bail!("not a JSON object");
    };
    if obj.contains_key("nodes") && obj.contains_key("links") {
        bail!("this is ComfyUI's UI format; save the workflow with \"Export (API)\" instead");
    }
    for (id, node) in obj {
        if node.get("class_type").and_then(Value::as_str).is_none() {
            bail!("node {id} has no class_type: not a workflow in API format");
        }
    }
    if obj.is_empty() {
        bail!("the workflow has no nodes");
    }
    Ok(obj.clone())
}

/// An input's declared type: a type name, or the allowed choices of a combo.
enum Spec<'a> {
    Type(&'a str),
    Choices(Vec<&'a str>),
}

fn spec(decl: &Value) -> Option<(Spec<'_>, Option<&serde_json::Map<String, Value>>)> {
    let first = decl.get(0)?;
    let opts = decl.get(1).and_then(Value::as_object);
    let s = match first {
        Value::Array(choices) => Spec::Choices(choices.iter().filter_map(Value::as_str).collect()),
        Value::String(t) if t == "COMBO" => Spec::Choices(
            opts.and_then(|o| o.get("options"))
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default(),
        ),
        Value::String(t) => Spec::Type(t),
        _ => return None,
    };
    Some((s, opts))
}

fn types_fit(output: &str, input: &str) -> bool {
    if output == "*" || input == "*" {
        return true;
    }
    let i: Vec<&str> = input.split(',').map(str::trim).collect();
    output.split(',').map(str::trim).any(|o| i.contains(&o))
}

/// Checks `wf` against `info` (`/object_info`). With `models_here`, model-file choices must be in
/// the app's list (the host); without, they are accepted (the build has no models).
pub fn check(wf: &serde_json::Map<String, Value>, info: &Value, models_here: bool) -> Checked {
    let mut out = Checked {
        nodes: wf.len(),
        ..Checked::default()
    };
    let mut ids: Vec<&String> = wf.keys().collect();
    ids.sort_by_key(|id| (id.parse::<u64>().unwrap_or(u64::MAX), (*id).clone()));
    for id in ids {
        let node = &wf[id.as_str()];
        let class = node["class_type"].as_str().unwrap_or_default();
        let who = format!("node {id} ({class})");
        let Some(def) = info.get(class) else {
            out.problems
                .push(format!("{who}: this release has no node class {class:?}"));
            continue;
        };
        let empty = serde_json::Map::new();
        let inputs = node
            .get("inputs")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let declared = |group: &str| def["input"].get(group).and_then(Value::as_object);
        if let Some(req) = declared("required") {
            for name in req.keys() {
                if !inputs.contains_key(name) {
                    out.problems
                        .push(format!("{who}: required input {name:?} is not given"));
                }
            }
        }
        for (name, value) in inputs {
            let Some(decl) = declared("required")
                .and_then(|r| r.get(name))
                .or_else(|| declared("optional").and_then(|o| o.get(name)))
            else {
                continue; // ComfyUI ignores inputs a class does not declare.
            };
            let Some((spec, opts)) = spec(decl) else {
                continue;
            };
            // A link: `["4", 0]`, output 0 of node 4.
            if let Some([src, slot]) = value.as_array().map(Vec::as_slice) {
                if let (Some(src), Some(slot)) = (src.as_str(), slot.as_u64()) {
                    let Some(src_node) = wf.get(src) else {
                        out.problems.push(format!(
                            "{who}: input {name:?} links to node {src}, which the workflow lacks"
                        ));
                        continue;
                    };
                    let src_class = src_node["class_type"].as_str().unwrap_or_default();
                    let produced = info
                        .get(src_class)
                        .and_then(|d| d["output"].get(slot as usize))
                        .and_then(Value::as_str);
                    if let (Spec::Type(t), Some(o)) = (&spec, produced) {
                        if !types_fit(o, t) {
                            out.problems.push(format!(
                                "{who}: input {name:?} wants {t}, node {src} ({src_class}) output {slot} gives {o}"
                            ));
                        }
                    }
                    continue;
                }
            }
            let num = |key: &str| opts.and_then(|o| o.get(key)).and_then(Value::as_f64);
            let bad = match (&spec, value) {
                (Spec::Choices(c), Value::String(v)) => {
                    if c.contains(&v.as_str()) {
                        None
                    } else if is_model_file(v) {
                        if models_here {
                            out.missing_models.push(format!("{v} ({who}, {name})"));
                        }
                        None
                    } else {
                        Some(format!(
                            "{v:?} is not one of its {} choices{}",
                            c.len(),
                            if c.len() <= 8 {
                                format!(" ({})", c.join(", "))
                            } else {
                                String::new()
                            }
                        ))
                    }
                }
                (Spec::Choices(_), v) => Some(format!("{v} is not a choice")),
                (Spec::Type("INT"), Value::Number(n)) if n.is_i64() || n.is_u64() => {
                    let x = n.as_f64().unwrap_or_default();
                    match (num("min"), num("max")) {
                        (Some(lo), _) if x < lo => Some(format!("{n} is below its minimum {lo}")),
                        (_, Some(hi)) if x > hi => Some(format!("{n} is above its maximum {hi}")),
                        _ => None,
                    }
                }
                (Spec::Type("FLOAT"), Value::Number(n)) => {
                    let x = n.as_f64().unwrap_or_default();
                    match (num("min"), num("max")) {
                        (Some(lo), _) if x < lo => Some(format!("{n} is below its minimum {lo}")),
                        (_, Some(hi)) if x > hi => Some(format!("{n} is above its maximum {hi}")),
                        _ => None,
                    }
                }
                (Spec::Type("STRING"), Value::String(_)) => None,
                (Spec::Type("BOOLEAN"), Value::Bool(_)) => None,
                (Spec::Type(t @ ("INT" | "FLOAT" | "STRING" | "BOOLEAN")), v) => {
                    Some(format!("{v} is not of type {t}"))
                }
                (Spec::Type(t), v) => Some(format!(
                    "{v} is a value, but an input of type {t} takes a link from another node's output"
                )),
            };
            if let Some(why) = bad {
                out.problems.push(format!("{who}: input {name:?}: {why}"));
            }
        }
    }
    out
}

/// How [`check_and_run`] treats model files a workflow names that the app does not list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Models {
    /// Not checked: the builder's smoke start has no models.
    Ignore,
    /// Recorded; the workflow is checked but not run.
    Warn,
    /// The workflow fails.
    Fail,
}

/// What a release's workflows did against a live app.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Ran {
    pub checked: usize,
    pub ran: usize,
    /// `workflow: file (node, input)` for each model file the app does not list ([`Models::Warn`]).
    pub missing_models: Vec<String>,
    pub seconds: f64,
}

/// Why a workflow failed.
#[derive(Debug)]
pub enum Why {
    /// Not a workflow in ComfyUI's API format.
    Unreadable(anyhow::Error),
    /// It does not fit the app: one message per problem.
    DoesNotFit(Vec<String>),
    /// It names model files the app does not list ([`Models::Fail`]).
    MissingModels(Vec<String>),
    /// Queued, it failed or did not finish in time.
    Run(anyhow::Error),
}

/// The first workflow that failed, and what was done before it.
#[derive(Debug)]
pub struct Failed {
    pub workflow: String,
    pub why: Why,
    pub done: Ran,
}

/// Checks each of a release's workflows against `info` (the live app's `/object_info`) and runs
/// those marked to run, in order, stopping at the first that fails; each run gets the time
/// `run_timeout` gives when it starts. The builder's smoke start and the host's health check both
/// go through here.
pub fn check_and_run(
    base: &str,
    workflows: &[bundle::Workflow],
    info: &Value,
    models: Models,
    run_timeout: &dyn Fn() -> Duration,
) -> std::result::Result<Ran, Box<Failed>> {
    let t0 = Instant::now();
    let mut done = Ran::default();
    for w in workflows {
        let fail = |why: Why, mut done: Ran| {
            done.seconds = t0.elapsed().as_secs_f64();
            Box::new(Failed {
                workflow: w.name.clone(),
                why,
                done,
            })
        };
        let wf = match parse(&w.prompt) {
            Ok(wf) => wf,
            Err(e) => return Err(fail(Why::Unreadable(e), done)),
        };
        let c = check(&wf, info, models != Models::Ignore);
        if !c.problems.is_empty() {
            return Err(fail(Why::DoesNotFit(c.problems), done));
        }
        done.checked += 1;
        if !c.missing_models.is_empty() {
            if models == Models::Fail {
                return Err(fail(Why::MissingModels(c.missing_models), done));
            }
            done.missing_models
                .extend(c.missing_models.iter().map(|x| format!("{}: {x}", w.name)));
            continue;
        }
        if w.run {
            let left = run_timeout();
            let run = reqwest::blocking::Client::builder()
                .timeout(left)
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|client| run(&client, base, &wf, left));
            if let Err(e) = run {
                return Err(fail(Why::Run(e), done));
            }
            done.ran += 1;
        }
    }
    done.seconds = t0.elapsed().as_secs_f64();
    Ok(done)
}

/// Queues `wf` through `POST /prompt` and waits for `/history` to report it finished; an error
/// names the node and the exception ComfyUI reported.
pub fn run(
    client: &reqwest::blocking::Client,
    base: &str,
    wf: &serde_json::Map<String, Value>,
    timeout: Duration,
) -> Result<Duration> {
    let t0 = Instant::now();
    let body = serde_json::json!({ "prompt": wf, "client_id": "comfy-release-check" });
    let resp = client
        .post(format!("{base}/prompt"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&body)?)
        .send()
        .context("POST /prompt")?;
    let status = resp.status();
    let answer: Value = crate::http::read_json(resp, "/prompt")?;
    if !status.is_success() {
        bail!(
            "ComfyUI refused the prompt ({status}): {}",
            support::term_safe(
                &answer
                    .get("error")
                    .map_or_else(|| answer.to_string(), Value::to_string)
            )
        );
    }
    let id = answer["prompt_id"]
        .as_str()
        .context("/prompt gave no prompt_id")?
        .to_owned();
    loop {
        let h: Value = crate::http::read_json(
            client
                .get(format!("{base}/history/{id}"))
                .send()?
                .error_for_status()?,
            "/history",
        )?;
        if let Some(entry) = h.get(&id) {
            let st = &entry["status"];
            if st["status_str"] == "success" && st["completed"] == true {
                return Ok(t0.elapsed());
            }
            let err = st["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m[0] == "execution_error")
                .map(|m| {
                    format!(
                        "node {} ({}): {}: {}",
                        m[1]["node_id"].as_str().unwrap_or("?"),
                        m[1]["node_type"].as_str().unwrap_or("?"),
                        m[1]["exception_type"].as_str().unwrap_or("error"),
                        m[1]["exception_message"].as_str().unwrap_or("").trim()
                    )
                })
                .unwrap_or_else(|| format!("status {}", st["status_str"]));
            // The app's own words (an exception message a node wrote) reach an operator's
            // terminal: escaped.
            bail!("the prompt failed: {}", support::term_safe(&err));
        }
        if t0.elapsed() > timeout {
            bail!("the prompt did not finish within {}s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info() -> Value {
        json!({
            "EmptyImage": {"input": {"required": {
                "width": ["INT", {"default": 512, "min": 1, "max": 16384}],
                "height": ["INT", {"default": 512, "min": 1, "max": 16384}],
                "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
                "color": ["INT", {"default": 0, "min": 0, "max": 16777215}]}},
                "output": ["IMAGE"]},
            "ImageInvert": {"input": {"required": {"image": ["IMAGE"]}}, "output": ["IMAGE"]},
            "CheckpointLoaderSimple": {"input": {"required": {
                "ckpt_name": [["a.safetensors"], {}]}}, "output": ["MODEL", "CLIP", "VAE"]},
            "Upscale": {"input": {"required": {
                "method": ["COMBO", {"options": ["nearest", "bilinear"]}],
                "image": ["IMAGE"]}}, "output": ["IMAGE"]},
        })
    }

    #[test]
    fn a_fitting_workflow_passes_and_each_misfit_is_named() {
        let good = parse(
            r#"{"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
                "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
                "3": {"class_type": "Upscale", "inputs": {"method": "bilinear", "image": ["2", 0]}}}"#,
        )
        .unwrap();
        assert_eq!(
            check(&good, &info(), true),
            Checked {
                nodes: 3,
                ..Checked::default()
            }
        );
        let bad = parse(
            r#"{"1": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": "x", "batch_size": 1}},
                "2": {"class_type": "ImageInvert", "inputs": {"image": ["4", 1]}},
                "3": {"class_type": "Upscale", "inputs": {"method": "bicubic", "image": ["5", 0]}},
                "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl.safetensors"}},
                "5": {"class_type": "NewerSwitch", "inputs": {}},
                "6": {"class_type": "ImageInvert", "inputs": {"image": 3}}}"#,
        )
        .unwrap();
        let c = check(&bad, &info(), false);
        assert_eq!(
            c.problems,
            [
                "node 1 (EmptyImage): required input \"color\" is not given",
                "node 1 (EmptyImage): input \"height\": \"x\" is not of type INT",
                "node 1 (EmptyImage): input \"width\": 0 is below its minimum 1",
                "node 2 (ImageInvert): input \"image\" wants IMAGE, node 4 (CheckpointLoaderSimple) output 1 gives CLIP",
                "node 3 (Upscale): input \"method\": \"bicubic\" is not one of its 2 choices (nearest, bilinear)",
                "node 5 (NewerSwitch): this release has no node class \"NewerSwitch\"",
                "node 6 (ImageInvert): input \"image\": 3 is a value, but an input of type IMAGE takes a link from another node's output",
            ]
        );
        // At build the model file is accepted; on a host without it, it is named.
        assert!(c.missing_models.is_empty());
        let host = check(&bad, &info(), true);
        assert_eq!(
            host.missing_models,
            ["sdxl.safetensors (node 4 (CheckpointLoaderSimple), ckpt_name)"]
        );
    }

    #[test]
    fn the_ui_format_is_refused_with_what_to_do() {
        let err = parse(r#"{"nodes": [], "links": [], "version": 0.4}"#).unwrap_err();
        assert!(err.to_string().contains("Export (API)"), "{err}");
        assert!(parse(r#"{"1": {"inputs": {}}}"#).is_err());
        assert!(parse("[]").is_err());
    }

    /// A stand-in app for runs: answers `POST /prompt` with a prompt id and `/history/<id>` with
    /// success, counting the prompts it was given.
    fn app() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead as _, BufReader, Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let prompts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = prompts.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut len = 0;
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                let answer = if line.starts_with("POST /prompt") {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    r#"{"prompt_id": "p1", "number": 0}"#
                } else {
                    r#"{"p1": {"status": {"status_str": "success", "completed": true}}}"#
                };
                write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                )
                .unwrap();
            }
        });
        (base, prompts)
    }

    fn workflow(name: &str, prompt: &str, run: bool) -> bundle::Workflow {
        bundle::Workflow {
            name: name.into(),
            prompt: prompt.into(),
            run,
        }
    }

    #[test]
    fn workflows_are_checked_and_run_in_order_and_missing_models_follow_the_policy() {
        let (base, prompts) = app();
        let fits = r#"{"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}}}"#;
        let needs_model = r#"{"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl.safetensors"}}}"#;
        let wfs = [
            workflow("a", fits, true),
            workflow("b", needs_model, true),
            workflow("c", fits, false),
        ];
        let timeout = || Duration::from_secs(10);
        // The builder: models not checked, every workflow marked to run runs.
        let ran = check_and_run(&base, &wfs, &info(), Models::Ignore, &timeout).unwrap();
        assert_eq!(
            (
                ran.checked,
                ran.ran,
                prompts.swap(0, std::sync::atomic::Ordering::SeqCst)
            ),
            (3, 2, 2)
        );
        // A host that warns: the workflow without its model is checked, named, and not run.
        let ran = check_and_run(&base, &wfs, &info(), Models::Warn, &timeout).unwrap();
        assert_eq!((ran.checked, ran.ran), (3, 1));
        assert_eq!(
            ran.missing_models,
            ["b: sdxl.safetensors (node 1 (CheckpointLoaderSimple), ckpt_name)"]
        );
        // A host that fails: stops at b (checked: it fits, but lacks its model), after a ran.
        let f = check_and_run(&base, &wfs, &info(), Models::Fail, &timeout).unwrap_err();
        assert_eq!(
            (f.workflow.as_str(), f.done.checked, f.done.ran),
            ("b", 2, 1)
        );
        assert!(
            matches!(&f.why, Why::MissingModels(m) if m.len() == 1),
            "{:?}",
            f.why
        );
        // A workflow that does not fit stops the loop before anything after it runs.
        prompts.store(0, std::sync::atomic::Ordering::SeqCst);
        let misfit = [
            workflow(
                "x",
                r#"{"1": {"class_type": "NewerSwitch", "inputs": {}}}"#,
                true,
            ),
            workflow("a", fits, true),
        ];
        let f = check_and_run(&base, &misfit, &info(), Models::Ignore, &timeout).unwrap_err();
        assert!(
            matches!(&f.why, Why::DoesNotFit(p) if p.len() == 1),
            "{:?}",
            f.why
        );
        assert_eq!(
            (
                f.done.checked,
                prompts.load(std::sync::atomic::Ordering::SeqCst)
            ),
            (0, 0)
        );
    }
}
