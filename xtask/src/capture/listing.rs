//! One run of `script/capture.py`: the case handed to it as JSON, and `capture.json`, the list
//! of taps it wrote, read back and checked against the tap contract.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use contract::{ArrayDtype, ComputeDtype};
use parity::manifest::{CaseRef, ContentSpec, DumpKey, ItemSpec, MessageSpec, Request};
use serde::Deserialize;
use xshell::Shell;

use crate::harness;

/// `capture.json`, written by `script/capture.py` next to the dumps.
#[derive(Deserialize)]
pub(super) struct CaptureListing {
    pub taps: Vec<CapturedTap>,
    pub versions: Versions,
    pub threads: u32,
    /// Peak resident memory of the Python process.
    #[serde(default)]
    pub peak_rss_bytes: Option<u64>,
}

/// One tap the harness wrote (with its part, for a case checked in parts); a name outside the
/// contract is refused as the listing is read.
#[derive(Deserialize)]
pub(super) struct CapturedTap {
    pub tap: DumpKey,
    pub shape: Vec<usize>,
    pub dtype: ArrayDtype,
    #[serde(default)]
    pub mean_abs: Option<f64>,
}

#[derive(Deserialize)]
pub(super) struct Versions {
    pub transformers: String,
    pub torch: String,
    pub numpy: String,
    pub pillow: String,
    pub python: String,
    /// PyAV, the video decoder (absent from listings of harnesses before it was pinned).
    #[serde(default)]
    pub av: Option<String>,
}

impl CaptureListing {
    /// Parses `capture.json`; every tap must be a contract tap with the contract's dtype.
    pub(super) fn parse(text: &str) -> Result<CaptureListing> {
        let listing: CaptureListing =
            serde_json::from_str(text).context("the harness wrote a listing out of contract")?;
        for t in &listing.taps {
            ensure!(
                t.tap.tap.dtype() == t.dtype,
                "the harness wrote {} as {} but the contract says {}",
                t.tap,
                t.dtype,
                t.tap.tap.dtype()
            );
        }
        Ok(listing)
    }
}

/// The case as `capture.py --case-json` reads it: the checkpoint, the loader, the dtype, the
/// generation settings and the request — `images` and `prompt` for one user message; for the
/// other requests (`request`), messages whose image items carry their files' paths, the turns,
/// the suffixes, the template's arguments, or each batch row's own request.
pub(super) fn case_spec(case: CaseRef, dtype: ComputeDtype, model_dir: &Path) -> serde_json::Value {
    let c = case.case;
    let mut spec = serde_json::json!({
        "model_dir": model_dir,
        "loader": c.loader.name(),
        "dtype": dtype.name(),
        "generate": c.generate,
        "gen_top_k": c.gen_top_k,
    });
    let request = match case.request() {
        Request::Single { .. } | Request::Conversation { .. } => single_request(case),
        Request::Turns { turns } => serde_json::json!({
            "request": "turns",
            "turns": turns.iter().map(|t| messages(case, t)).collect::<Vec<_>>(),
            "chat_template_kwargs": c.chat_template_kwargs,
        }),
        Request::PrefixCache { prefix, suffixes } => serde_json::json!({
            "request": "prefix_cache",
            "messages": messages(case, prefix),
            "suffixes": suffixes.iter().map(|s| messages(case, s)).collect::<Vec<_>>(),
            "chat_template_kwargs": c.chat_template_kwargs,
        }),
        Request::Batch { .. } => serde_json::json!({
            "request": "batch",
            "batch": case.members().into_iter().map(single_request).collect::<Vec<_>>(),
        }),
    };
    let (serde_json::Value::Object(spec_map), serde_json::Value::Object(request)) = (&mut spec, request) else {
        unreachable!("both are JSON objects")
    };
    spec_map.extend(request);
    spec
}

/// One user message (`images`, `prompt`) or a conversation (`messages`).
fn single_request(case: CaseRef) -> serde_json::Value {
    match case.request() {
        Request::Conversation { messages: m } => serde_json::json!({
            "request": "conversation",
            "messages": messages(case, m),
            "chat_template_kwargs": case.case.chat_template_kwargs,
        }),
        _ => {
            let images: Vec<PathBuf> = case.image_paths().iter().map(|p| case.manifest.root.join(p)).collect();
            serde_json::json!({ "request": "single", "images": images, "prompt": case.case.prompt })
        }
    }
}

/// Messages as `apply_chat_template` takes them, each image item with its file's path, each
/// video item with its file's or frame folder's path (and a folder's frame rate).
fn messages(case: CaseRef, messages: &[MessageSpec]) -> serde_json::Value {
    messages
        .iter()
        .map(|m| {
            let content = match &m.content {
                ContentSpec::Text(text) => serde_json::json!(text),
                ContentSpec::Items(items) => items
                    .iter()
                    .map(|item| match item {
                        ItemSpec::Text { text } => serde_json::json!({ "type": "text", "text": text }),
                        ItemSpec::Image { image } => serde_json::json!({
                            "type": "image",
                            "path": case.manifest.root.join(case.image_path(image)),
                        }),
                        ItemSpec::Video { video } => serde_json::json!({
                            "type": "video",
                            "path": case.manifest.root.join(case.video_path(video)),
                            "fps": case.manifest.videos[video.as_str()].fps,
                        }),
                    })
                    .collect(),
            };
            serde_json::json!({ "role": m.role, "content": content })
        })
        .collect()
}

/// Runs the reference on one case in `dtype`, writing `<tap>.npy` and `capture.json` into `out`.
pub(super) fn capture_case(
    sh: &Shell,
    case: CaseRef,
    dtype: ComputeDtype,
    model_dir: &Path,
    out: &Path,
    threads: u32,
) -> Result<CaptureListing> {
    let mut script_args = vec![
        "--case-json".to_string(),
        case_spec(case, dtype, model_dir).to_string(),
        "--out".into(),
        out.display().to_string(),
        "--threads".into(),
        threads.to_string(),
    ];
    if case.model().stream {
        script_args.push("--stream".into());
    }
    harness::run_python(sh, "capture.py", &script_args)?;
    let listing_path = out.join("capture.json");
    let text = std::fs::read_to_string(&listing_path).with_context(|| format!("reading {}", listing_path.display()))?;
    CaptureListing::parse(&text).with_context(|| format!("parsing {}", listing_path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(taps: &str) -> String {
        format!(
            r#"{{"taps": [{taps}], "threads": 1, "versions": {{"transformers": "5.23.0", "torch": "2.15.0",
            "numpy": "2.4.6", "pillow": "13.0.0", "python": "3.11.7"}}}}"#
        )
    }

    #[test]
    fn a_listing_of_contract_taps_is_read_with_their_shapes() {
        let text = listing(
            r#"{"tap": "lm.layer.3", "shape": [5, 128], "dtype": "f32", "mean_abs": 0.5},
                                {"tap": "input.input_ids", "shape": [5], "dtype": "i64"}"#,
        );
        let l = CaptureListing::parse(&text).unwrap();
        let taps: Vec<String> = l.taps.iter().map(|t| t.tap.to_string()).collect();
        assert_eq!(taps, ["lm.layer.3", "input.input_ids"]);
        assert_eq!((l.taps[0].shape.as_slice(), l.taps[0].mean_abs), (&[5, 128][..], Some(0.5)));
        assert_eq!((l.threads, l.versions.transformers.as_str()), (1, "5.23.0"));
    }

    #[test]
    fn a_tap_outside_the_contract_or_of_the_wrong_dtype_is_refused_by_name() {
        let unknown = listing(r#"{"tap": "lm.layers.3", "shape": [5], "dtype": "f32"}"#);
        let err = format!("{:#}", CaptureListing::parse(&unknown).err().expect("an unknown tap"));
        assert!(err.contains("unknown tap \"lm.layers.3\""), "{err}");
        let wrong = listing(r#"{"tap": "input.input_ids", "shape": [5], "dtype": "f32"}"#);
        let err = format!("{:#}", CaptureListing::parse(&wrong).err().expect("a float token id"));
        assert!(err.contains("input.input_ids as f32 but the contract says i64"), "{err}");
    }

    #[test]
    fn the_harness_is_handed_the_cases_request_with_absolute_image_paths() {
        let manifest = parity::manifest::Manifest::load(&crate::cli::project_root().join("fixtures.toml")).unwrap();
        let case = manifest.case("chelsea-bf16").unwrap();
        let spec = case_spec(case, ComputeDtype::F32, Path::new("/models/tiny"));
        assert_eq!(spec["model_dir"], "/models/tiny");
        assert_eq!(spec["dtype"], "f32", "the dtype asked for, not the case's (the f32 half of a bf16 capture)");
        assert_eq!(spec["prompt"], case.case.prompt.as_deref().unwrap());
        assert_eq!(spec["request"], "single");
        assert_eq!(spec["loader"], "processor");
        let image = spec["images"][0].as_str().unwrap();
        assert!(Path::new(image).is_absolute() && image.ends_with("fixtures/images/chelsea.png"), "{image}");
        assert_eq!(spec["generate"], serde_json::json!(case.case.generate));
    }
}
