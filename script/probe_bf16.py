"""Runs the reference in bfloat16 (and float32) on manifest cases and dumps every tap as float32 .npy.

Not part of the capture harness (its digest does not cover this file, and nothing here writes
into fixtures/): a probe for measuring how far a bfloat16 run of transformers is from its own
float32 run (the "reference noise" a bf16 tolerance is scaled by) and for comparing the Rust
bf16 path against it (`script/compare_bf16.py`).

The model is loaded as capture.py loads it (`from_pretrained`, eager attention, the given
torch thread count, seed 0) but with `dtype=torch.bfloat16` (or float32): the stored bf16
weights are used as they are, an f32 checkpoint is rounded to bf16 by the loader. The taps are
capture.py's own hooks (`attach_hooks`, `record_generation`), so the names and the places they
are taken from are the contract's; every floating tap is cast to float32 when recorded.

    script/.venv/bin/python script/probe_bf16.py --case chelsea --case two-images --case text-only \
        --out /tmp/bf16-ref

writes /tmp/bf16-ref/<case>/<tap>.npy (bf16 run) and /tmp/bf16-ref/<case>/f32/<tap>.npy (the f32
run of the same inputs; byte-identical to fixtures/dumps/<case>/ on the machine that captured
them). Every tap is kept whole, whatever the case's `taps`, `rows` and `gen_top_k` say. The
full-width stand-in: `--case standin-astronaut --weights DIR --stream-f32` (bf16 resident, 9 GB;
f32 streamed as capture.py streams it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import AutoProcessor, Qwen3_5ForConditionalGeneration
from transformers.image_utils import load_image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from capture import (  # noqa: E402
    Recorder,
    attach_hooks,
    build_messages,
    pipeline_rank,
    record_generation,
    streamed_model,
)

DTYPES = {"bf16": torch.bfloat16, "f32": torch.float32}


def case_spec(manifest_path: Path, case: str, weights: Path | None) -> dict:
    """The case as `cargo xtask capture` hands it to capture.py, every tap kept whole (the
    case's `taps` and `rows` are not applied) and the generated logits whole (`gen_top_k`
    ignored). A model outside the repository is read from `weights`."""
    manifest = tomllib.loads(manifest_path.read_text())
    root = manifest_path.parent
    c = manifest["cases"][case]
    model = manifest["models"][c["model"]]
    if "path" in model:
        model_dir = root / model["path"]
    elif weights is not None:
        model_dir = weights
    else:
        sys.exit(f"error: case {case}: model {c['model']} is not in the repository; name it with --weights")
    return {
        "model_dir": model_dir,
        "images": [root / manifest["images"][i]["path"] for i in c.get("images", [])],
        "prompt": c["prompt"],
        "loader": c.get("loader", "processor"),
        "generate": c.get("generate"),
    }


def run(case: dict, dtype: torch.dtype, out: Path, threads: int, stream: bool) -> None:
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model_dir = Path(case["model_dir"])
    processor = AutoProcessor.from_pretrained(model_dir)
    if stream:
        # capture.py's float32 model read block by block (a 27B-width checkpoint in bounded memory).
        assert dtype == torch.float32, "only the float32 run streams"
        model = streamed_model(model_dir)
    else:
        model = Qwen3_5ForConditionalGeneration.from_pretrained(model_dir, dtype=dtype, attn_implementation="eager")
        model.eval()
    if case["loader"] == "processor":
        images = [Image.open(p) for p in case["images"]]
    else:
        images = [load_image(str(p)) for p in case["images"]]
    text = processor.apply_chat_template(
        build_messages(len(images), case["prompt"]), tokenize=False, add_generation_prompt=True
    )
    inputs = processor(text=[text], return_tensors="pt", **({"images": images} if images else {}))

    rec = Recorder()
    rec.put("input.input_ids", inputs["input_ids"][0])
    if images:
        rec.put("input.image_grid_thw", inputs["image_grid_thw"])
        rec.put("input.pixel_values", inputs["pixel_values"])
    handles = attach_hooks(model, rec, model.config.image_token_id, inputs["input_ids"])
    with torch.no_grad():
        # The streamed head computes the last position only, as capture.py --stream does.
        output = model(**inputs, use_cache=False, **({"logits_to_keep": 1} if stream else {}))
    for h in handles:
        h.remove()
    rec.put("lm.logits_last", output.logits[0, -1])
    if case.get("generate"):
        record_generation(model, inputs, rec, case["generate"], None)

    out.mkdir(parents=True, exist_ok=True)
    listing = []
    for name, array in sorted(rec.taps.items(), key=lambda item: pipeline_rank(item[0])):
        np.save(out / f"{name}.npy", array, allow_pickle=False)
        listing.append({"tap": name, "shape": list(array.shape)})
    meta = {"dtype": str(dtype), "threads": threads, "torch": torch.__version__, "taps": listing}
    (out / "probe.json").write_text(json.dumps(meta, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", required=True, help="a case of the manifest (repeatable)")
    parser.add_argument("--manifest", type=Path, default=Path(__file__).resolve().parent.parent / "fixtures.toml")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bf16-ref"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", choices=["both", *DTYPES], default="both")
    parser.add_argument("--weights", type=Path, help="the checkpoint of a model outside the repository")
    parser.add_argument(
        "--stream-f32", action="store_true", help="run the float32 side streamed, as capture.py --stream does"
    )
    args = parser.parse_args()
    for case in args.case:
        spec = case_spec(args.manifest, case, args.weights)
        for name in DTYPES if args.dtype == "both" else [args.dtype]:
            folder = args.out / case if name == "bf16" else args.out / case / "f32"
            run(spec, DTYPES[name], folder, args.threads, args.stream_f32 and name == "f32")
            print(f"{case} {name}: {folder}", file=sys.stderr)


if __name__ == "__main__":
    main()
