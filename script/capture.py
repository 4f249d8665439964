"""Captures the reference taps of one case with HuggingFace transformers.

Run by `cargo xtask capture`, never by hand in CI. The case arrives as JSON
(`--case-json`): the checkpoint folder, the image files and the prompt. The model is loaded
in float32 with eager attention, the chat messages are built as a user would build them
(the images first, then the prompt, in one user message), the processor prepares the inputs,
and one forward pass runs with hooks that record every tap of the contract in
ARCHITECTURE.md. Each tap is written as `<tap>.npy` into `--out`, and `capture.json` lists
the taps (in pipeline order) with shapes, dtypes, mean |x| and the library versions.

The script never writes a checkpoint: a missing model is an error pointing at
`cargo xtask make-model`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import PIL
import torch
import transformers
from PIL import Image
from transformers import AutoProcessor, Qwen3_5ForConditionalGeneration
from transformers.vision_utils import get_vision_interpolation_indices_and_weights


def build_messages(n_images: int, prompt: str) -> list[dict]:
    content = [{"type": "image"} for _ in range(n_images)]
    content.append({"type": "text", "text": prompt})
    return [{"role": "user", "content": content}]


PIPELINE = [
    "input.input_ids",
    "input.image_grid_thw",
    "input.position_ids",
    "input.pixel_values",
    "vision.patch_embed",
    "vision.pos_embed",
    "vision.block.",
    "vision.tower",
    "vision.projector",
    "lm.image_embeds",
    "lm.layer.",
    "lm.norm",
    "lm.logits_last",
]


def pipeline_rank(tap: str) -> tuple[int, int]:
    """Sort key: the order in which the stages run (the contract's table order)."""
    for rank, stem in enumerate(PIPELINE):
        if stem.endswith("."):
            if tap.startswith(stem):
                return rank, int(tap[len(stem) :])
        elif tap == stem:
            return rank, 0
    raise ValueError(f"{tap} is not a contract tap")


class Recorder:
    """Collects taps in the order the forward pass produces them."""

    def __init__(self) -> None:
        self.taps: dict[str, np.ndarray] = {}

    def put(self, name: str, value: torch.Tensor) -> None:
        if name in self.taps:
            raise RuntimeError(f"tap {name} recorded twice")
        value = value.detach()
        if value.dtype.is_floating_point:
            array = value.to(torch.float32).cpu().numpy()
        else:
            array = value.to(torch.int64).cpu().numpy()
        self.taps[name] = np.ascontiguousarray(array)


def attach_hooks(model: Qwen3_5ForConditionalGeneration, rec: Recorder, image_token_id: int, input_ids: torch.Tensor):
    visual = model.model.visual
    lm = model.model.language_model
    handles = []

    def output_hook(name):
        def hook(_module, _args, output):
            rec.put(name, output[0] if output.dim() == 3 else output)

        return hook

    handles.append(visual.patch_embed.register_forward_hook(output_hook("vision.patch_embed")))

    def pos_embed_hook(_module, args, kwargs):
        # The model adds `(pos_embed(indices) * weights).sum(1)`; recompute that sum with the
        # same library function and the same ops so the tap is exactly what was added.
        grid_thw = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        indices, weights = get_vision_interpolation_indices_and_weights(
            grid_thw,
            num_grid_per_side=visual.num_grid_per_side,
            mode=visual.interpolation_mode,
            align_corners=visual.interpolation_align_corners,
            spatial_merge_size=visual.config.spatial_merge_size,
        )
        rec.put("vision.pos_embed", (visual.pos_embed(indices) * weights[:, :, None]).sum(1))

    handles.append(visual.register_forward_pre_hook(pos_embed_hook, with_kwargs=True))
    for i, block in enumerate(visual.blocks):
        handles.append(block.register_forward_hook(output_hook(f"vision.block.{i}")))
    last = len(visual.blocks) - 1

    def tower_hook(_module, _args, output):
        rec.put("vision.tower", output)

    handles.append(visual.blocks[last].register_forward_hook(tower_hook))
    handles.append(visual.merger.register_forward_hook(output_hook("vision.projector")))

    def lm_inputs_hook(_module, _args, kwargs):
        # position_ids arrive as [3, batch, seq] for multimodal prompts and as None for text:
        # the text model then uses arange on all three axes, which is what we record.
        position_ids = kwargs.get("position_ids")
        embeds = kwargs["inputs_embeds"]
        seq = embeds.shape[1]
        if position_ids is None:
            position_ids = torch.arange(seq).view(1, 1, -1).expand(3, 1, -1)
        if position_ids.shape[0] == 4:  # text positions ride along as row 0
            position_ids = position_ids[1:]
        rec.put("input.position_ids", position_ids[:, 0, :])
        mask = input_ids[0] == image_token_id
        if bool(mask.any()):
            rec.put("lm.image_embeds", embeds[0][mask])

    handles.append(lm.register_forward_pre_hook(lm_inputs_hook, with_kwargs=True))
    for i, layer in enumerate(lm.layers):
        handles.append(layer.register_forward_hook(output_hook(f"lm.layer.{i}")))
    handles.append(lm.norm.register_forward_hook(output_hook("lm.norm")))
    return handles


def capture(case: dict, out: Path, threads: int) -> None:
    # The notes about optional fused kernels and the loading bar are noise here: the eager
    # reference path is the one we want.
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model_dir = Path(case["model_dir"])
    if not (model_dir / "config.json").is_file():
        sys.exit(f"error: no checkpoint at {model_dir} (config.json missing); run `cargo xtask make-model`")

    processor = AutoProcessor.from_pretrained(model_dir)
    model, info = Qwen3_5ForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "mismatched_keys")}
    if problems:
        sys.exit(f"error: checkpoint {model_dir} does not match the architecture: {problems}")
    model.eval()

    images = [Image.open(p) for p in case["images"]]
    messages = build_messages(len(images), case["prompt"])
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    kwargs = {"images": images} if images else {}
    inputs = processor(text=[text], return_tensors="pt", **kwargs)

    rec = Recorder()
    rec.put("input.input_ids", inputs["input_ids"][0])
    if images:
        rec.put("input.image_grid_thw", inputs["image_grid_thw"])
        rec.put("input.pixel_values", inputs["pixel_values"])

    handles = attach_hooks(model, rec, model.config.image_token_id, inputs["input_ids"])
    with torch.no_grad():
        output = model(**inputs, use_cache=False)
    for h in handles:
        h.remove()
    rec.put("lm.logits_last", output.logits[0, -1])

    out.mkdir(parents=True, exist_ok=True)
    listing = []
    for name, array in sorted(rec.taps.items(), key=lambda item: pipeline_rank(item[0])):
        np.save(out / f"{name}.npy", array, allow_pickle=False)
        entry = {"tap": name, "shape": list(array.shape), "dtype": "i64" if array.dtype == np.int64 else "f32"}
        if array.dtype != np.int64:
            entry["mean_abs"] = float(np.abs(array).mean())
        listing.append(entry)
    meta = {
        "rendered_prompt": text,
        "taps": listing,
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "pillow": PIL.__version__,
            "python": platform.python_version(),
        },
        "threads": threads,
    }
    (out / "capture.json").write_text(json.dumps(meta, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case-json", required=True, help="the case: model_dir, images, prompt")
    parser.add_argument("--out", required=True, type=Path, help="folder for the .npy taps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (fixed so reruns match bytes)")
    args = parser.parse_args()
    capture(json.loads(args.case_json), args.out, args.threads)


if __name__ == "__main__":
    main()
