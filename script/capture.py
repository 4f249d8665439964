"""Captures the reference taps of one case with HuggingFace transformers.

Run by `cargo xtask capture`, never by hand in CI. The case arrives as JSON
(`--case-json`): the checkpoint folder, the image files and the prompt. The model is loaded
in the case's dtype (`"f32"`, the default, or `"bf16"`: `from_pretrained(dtype=...)` as users
load it, so a bf16 run computes in bf16 with transformers' own upcasts) with eager attention, the chat messages are built as a user would build them
(the images first, then the prompt, in one user message), the processor prepares the inputs,
and one forward pass runs with hooks that record every tap of the contract in
ARCHITECTURE.md. Each tap is written as `<tap>.npy` into `--out`, and `capture.json` lists
the taps (in pipeline order) with shapes, dtypes, mean |x|, the library versions and the
peak resident memory.

A case with `generate` (N steps) then runs transformers' greedy `generate` (do_sample=False,
max_new_tokens=N, cache on) and records the cache right after the prefill (`cache.{i}.conv`,
`cache.{i}.recurrent` of each Gated DeltaNet layer, `cache.{i}.key`, `cache.{i}.value` of
each attention layer) and each step's logits and token (`gen.logits`, `gen.tokens`; with
`gen_top_k`, the top-k ids and logits per step instead of whole rows).

A video item of a conversation is decoded as transformers' `read_video_pyav` decodes it (PyAV,
pinned in uv.lock), every frame, or read from a folder of PNG frames with `load_image` at the
frame rate the manifest gives; the processor then samples, resizes and patchifies it
(`videos=`, with the metadata, so it samples as it would from a file). The frames it sampled
are recorded as `input.video_frames`. The vision tower runs twice (images, then videos): its
taps hold the image rows, then the video rows.

`--stream` runs the same forward pass in bounded memory, for checkpoints whose float32
weights do not fit in RAM (Qwen3.6-27B is over 100 GB in float32). The model is built on
the meta device; each vision block, each decoder layer, the patch embedding, the position
table, the merger and the final norm is read from the checkpoint (float32) just before it
runs and dropped just after; the token embedding reads only the rows looked up; the
language-model head reads its weight in blocks of rows and computes only the last
position's logits. The modules are transformers' own, so the taps are the same
numbers as without `--stream`, except the logits: computed for the last position alone
(a matrix-vector product rather than a matrix product), they may differ in the last bits.

The script never writes a checkpoint: a missing model is an error pointing at
`cargo xtask make-model`.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import platform
import resource
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import PIL
import torch
import transformers
from PIL import Image
from safetensors import safe_open
from torch import nn
from transformers import (
    AutoConfig,
    AutoProcessor,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeForConditionalGeneration,
)
from transformers.image_utils import load_image
from transformers.video_utils import load_video
from transformers.vision_utils import get_vision_interpolation_indices_and_weights

LM_HEAD_ROWS = 16384  # vocabulary rows of the language-model head read at a time in --stream

# The model class of each `model_type` the harness captures.
MODEL_CLASSES = {
    "qwen3_5": Qwen3_5ForConditionalGeneration,
    "qwen3_5_moe": Qwen3_5MoeForConditionalGeneration,
}
# How an MoE model's experts run: `from_pretrained` picks "grouped_mm" unless told otherwise
# (each token's k weighted expert outputs summed in f32, rounded once); "eager" adds expert by
# expert into the output, rounding on every add in bf16. Pinned to the default users get, and
# recorded in capture.json.
EXPERTS_IMPLEMENTATION = "grouped_mm"


def model_class(model_dir: Path):
    model_type = json.loads((model_dir / "config.json").read_text()).get("model_type", "qwen3_5")
    if model_type not in MODEL_CLASSES:
        sys.exit(f"error: model_type {model_type!r} is not captured here (known: {', '.join(MODEL_CLASSES)})")
    return MODEL_CLASSES[model_type]


def build_messages(n_images: int, prompt: str) -> list[dict]:
    content = [{"type": "image"} for _ in range(n_images)]
    content.append({"type": "text", "text": prompt})
    return [{"role": "user", "content": content}]


PIPELINE = [
    "input.input_ids",
    "input.attention_mask",
    "input.image_grid_thw",
    "input.video_grid_thw",
    "input.position_ids",
    "input.pixel_values",
    "input.video_frames",
    "input.pixel_values_videos",
    "vision.patch_embed",
    "vision.pos_embed",
    "vision.block.",
    "vision.tower",
    "vision.projector",
    "lm.image_embeds",
    "lm.video_embeds",
    "moe.",
    "lm.layer.",
    "lm.norm",
    "lm.logits_last",
    "cache.",
    "gen.logits",
    "gen.top_ids",
    "gen.top_logits",
    "gen.tokens",
]

CACHE_KINDS = ["conv", "recurrent", "key", "value"]
MOE_KINDS = ["router_logits", "top_ids", "top_weights", "shared", "out"]


def pipeline_rank(tap: str) -> tuple[int, int, int]:
    """Sort key: the order in which the stages run (the contract's table order); the cache
    taps `cache.{i}.{kind}` by layer, then kind; the MoE taps `moe.{i}.{kind}` of layer i right
    before its output `lm.layer.{i}`."""
    for rank, stem in enumerate(PIPELINE):
        if stem == "cache.":
            if tap.startswith(stem):
                layer, kind = tap[len(stem) :].split(".")
                return rank, int(layer), CACHE_KINDS.index(kind)
        elif stem == "moe.":
            if tap.startswith(stem):
                layer, kind = tap[len(stem) :].split(".")
                return PIPELINE.index("lm.layer."), int(layer), MOE_KINDS.index(kind)
        elif stem == "lm.layer.":
            if tap.startswith(stem):
                return rank, int(tap[len(stem) :]), len(MOE_KINDS)
        elif stem.endswith("."):
            if tap.startswith(stem):
                return rank, int(tap[len(stem) :]), 0
        elif tap == stem:
            return rank, 0, 0
    raise ValueError(f"{tap} is not a contract tap")


class Recorder:
    """Collects taps in the order the forward pass produces them."""

    def __init__(self) -> None:
        self.taps: dict[str, np.ndarray] = {}

    def put(self, name: str, value: torch.Tensor) -> None:
        if name in self.taps:
            raise RuntimeError(f"tap {name} recorded twice")
        self.taps[name] = self.array(value)

    def extend(self, name: str, value: torch.Tensor) -> None:
        """Appends rows to a tap: the vision tower runs once for the images and once for the
        videos, and its taps hold the image rows, then the video rows."""
        array = self.array(value)
        if name in self.taps:
            array = np.ascontiguousarray(np.concatenate([self.taps[name], array]))
        self.taps[name] = array

    @staticmethod
    def array(value: torch.Tensor) -> np.ndarray:
        value = value.detach()
        if value.dtype.is_floating_point:
            array = value.to(torch.float32).cpu().numpy()
        else:
            array = value.to(torch.int64).cpu().numpy()
        return np.ascontiguousarray(array)


def attach_hooks(
    model: Qwen3_5ForConditionalGeneration,
    rec: Recorder,
    image_token_id: int,
    input_ids: torch.Tensor,
    batched: bool = False,
):
    """Forward hooks recording every tap of the forward pass. The language model's taps drop
    the batch axis of one sequence and keep it for a batch (`batched`); the vision taps have
    none (the images of every row are concatenated; a prompt with videos runs the tower a
    second time for them, whose rows follow the images')."""
    visual = model.model.visual
    lm = model.model.language_model
    handles = []

    def output_hook(name):
        def hook(_module, _args, output):
            rec.put(name, output[0] if output.dim() == 3 and not batched else output)

        return hook

    def vision_hook(name):
        def hook(_module, _args, output):
            rec.extend(name, output)

        return hook

    handles.append(visual.patch_embed.register_forward_hook(vision_hook("vision.patch_embed")))

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
        rec.extend("vision.pos_embed", (visual.pos_embed(indices) * weights[:, :, None]).sum(1))

    handles.append(visual.register_forward_pre_hook(pos_embed_hook, with_kwargs=True))
    for i, block in enumerate(visual.blocks):
        handles.append(block.register_forward_hook(vision_hook(f"vision.block.{i}")))
    last = len(visual.blocks) - 1
    handles.append(visual.blocks[last].register_forward_hook(vision_hook("vision.tower")))
    handles.append(visual.merger.register_forward_hook(vision_hook("vision.projector")))
    video_token_id = model.config.video_token_id

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
        if batched:
            rec.put("input.position_ids", position_ids.expand(3, embeds.shape[0], -1).permute(1, 0, 2))
            mask = input_ids == image_token_id
            if bool(mask.any()):
                rec.put("lm.image_embeds", embeds[mask])
            return
        rec.put("input.position_ids", position_ids[:, 0, :])
        mask = input_ids[0] == image_token_id
        if bool(mask.any()):
            rec.put("lm.image_embeds", embeds[0][mask])
        mask = input_ids[0] == video_token_id
        if bool(mask.any()):
            rec.put("lm.video_embeds", embeds[0][mask])

    handles.append(lm.register_forward_pre_hook(lm_inputs_hook, with_kwargs=True))
    for i, layer in enumerate(lm.layers):
        handles.append(layer.register_forward_hook(output_hook(f"lm.layer.{i}")))
        if hasattr(layer.mlp, "gate") and hasattr(layer.mlp, "experts") and not batched:
            handles.extend(moe_hooks(layer.mlp, rec, i))
    handles.append(lm.norm.register_forward_hook(output_hook("lm.norm")))
    return handles


def moe_hooks(block, rec: Recorder, i: int) -> list:
    """The taps of a sparse MoE block (`Qwen3_5MoeSparseMoeBlock`): the router's raw logits,
    its top-k experts and their renormalised weights (the router module's own outputs: its
    `F.linear` logits, not the softmax the model's `router_logits` output records), the shared
    expert times its sigmoid gate (recomputed from the two modules' outputs with the block's own
    ops, so the bits are the block's), and the block's output."""
    seen = {}

    def router(_module, _args, output):
        logits, weights, ids = output
        rec.put(f"moe.{i}.router_logits", logits)
        rec.put(f"moe.{i}.top_ids", ids)
        rec.put(f"moe.{i}.top_weights", weights)

    def shared(_module, _args, output):
        seen["shared"] = output

    def shared_gate(_module, _args, output):
        rec.put(f"moe.{i}.shared", torch.nn.functional.sigmoid(output) * seen.pop("shared"))

    def out(_module, _args, output):
        rec.put(f"moe.{i}.out", output[0] if output.dim() == 3 else output)

    return [
        block.gate.register_forward_hook(router),
        block.shared_expert.register_forward_hook(shared),
        block.shared_expert_gate.register_forward_hook(shared_gate),
        block.register_forward_hook(out),
    ]


class Checkpoint:
    """The tensors of a safetensors checkpoint (one file, or shards with an index), read on demand.

    Every read opens the file that holds the tensor and closes it afterwards, so the pages
    mapped for the read are released and the resident memory is that of the tensors kept.
    Values are converted to `dtype`, as `from_pretrained(dtype=dtype)` converts them.
    """

    def __init__(self, model_dir: Path, dtype: torch.dtype) -> None:
        self.dtype = dtype
        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {name: model_dir / file for name, file in weight_map.items()}
        else:
            single = model_dir / "model.safetensors"
            with safe_open(single, framework="pt") as f:
                self.files = {name: single for name in f.keys()}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every tensor found where the index says it is."""
        shapes = {}
        for path in sorted(set(self.files.values())):
            with safe_open(path, framework="pt") as f:
                for name in f.keys():
                    if self.files.get(name) == path:
                        shapes[name] = tuple(f.get_slice(name).get_shape())
        return shapes

    def read(self, name: str) -> torch.Tensor:
        with safe_open(self.files[name], framework="pt") as f:
            return f.get_tensor(name).to(self.dtype)

    def read_rows(self, name: str, runs: list[tuple[int, int]]) -> torch.Tensor:
        """Rows [start, stop) of each run, concatenated."""
        with safe_open(self.files[name], framework="pt") as f:
            tensor = f.get_slice(name)
            return torch.cat([tensor[start:stop].to(self.dtype) for start, stop in runs])


class StreamedEmbedding(nn.Module):
    """nn.Embedding whose table stays in the checkpoint: only the rows looked up are read."""

    def __init__(self, checkpoint: Checkpoint, name: str) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.name = name

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = torch.unique(input_ids).tolist()  # sorted
        runs = []
        for i in ids:
            if runs and runs[-1][1] == i:
                runs[-1] = (runs[-1][0], i + 1)
            else:
                runs.append((i, i + 1))
        rows = self.checkpoint.read_rows(self.name, runs)
        return rows[torch.searchsorted(torch.tensor(ids), input_ids)]


class StreamedLinear(nn.Module):
    """nn.Linear (no bias) whose weight stays in the checkpoint, applied LM_HEAD_ROWS outputs at a time."""

    def __init__(self, checkpoint: Checkpoint, name: str, out_features: int) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.name = name
        self.out_features = out_features

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        blocks = []
        for start in range(0, self.out_features, LM_HEAD_ROWS):
            stop = min(self.out_features, start + LM_HEAD_ROWS)
            weight = self.checkpoint.read_rows(self.name, [(start, stop)])
            blocks.append(nn.functional.linear(hidden_states, weight))
        return torch.cat(blocks, dim=-1)


def check_checkpoint(model: nn.Module, checkpoint: Checkpoint, model_dir: Path) -> None:
    """What `from_pretrained` reports as missing or mismatched keys, for the streamed model.

    Tensors the model does not have (the release's `mtp.*` head) are ignored, as transformers
    ignores them, and only noted.
    """
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = checkpoint.shapes()
    missing = sorted(name for name in expected if name not in found)
    mismatched = [
        f"{name} {list(found[name])} (model: {list(shape)})"
        for name, shape in sorted(expected.items())
        if name in found and found[name] != shape
    ]
    problems = ([f"missing {missing}"] if missing else []) + ([f"mismatched {mismatched}"] if mismatched else [])
    if problems:
        sys.exit(f"error: checkpoint {model_dir} does not match the architecture: {'; '.join(problems)}")
    extra = Counter(name.split(".", 1)[0] + ".*" for name in found if name not in expected)
    if extra:
        ignored = ", ".join(f"{prefix} ({n} tensors)" for prefix, n in sorted(extra.items()))
        print(f"note: checkpoint tensors the forward pass does not use are ignored: {ignored}", file=sys.stderr)


def streamed_model(model_dir: Path, dtype: torch.dtype):
    """`Qwen3_5ForConditionalGeneration.from_pretrained(dtype=dtype, eager)` with weights read per block.

    The skeleton is built on the meta device. The rotary embeddings' inverse frequencies are
    non-persistent buffers (not in the checkpoint), so those two small modules are built
    again on the CPU, computed as transformers computes them. Every other weight is read by
    a forward pre-hook of the module that uses it and dropped (back to meta) by its forward
    hook; the hooks are attached here, before the taps' hooks, so they run first.
    """
    config = AutoConfig.from_pretrained(model_dir)
    extra = {"experts_implementation": EXPERTS_IMPLEMENTATION} if config.model_type == "qwen3_5_moe" else {}
    with torch.device("meta"):
        model = model_class(model_dir)._from_config(config, dtype=dtype, attn_implementation="eager", **extra)
    model.eval()
    visual = model.model.visual
    lm = model.model.language_model
    # Built again on the CPU (the MoE family's classes are the same modules under other names).
    visual.rotary_pos_emb = type(visual.rotary_pos_emb)(visual.config)
    lm.rotary_emb = type(lm.rotary_emb)(config=lm.config)

    checkpoint = Checkpoint(model_dir, dtype)
    check_checkpoint(model, checkpoint, model_dir)
    lm.embed_tokens = StreamedEmbedding(checkpoint, "model.language_model.embed_tokens.weight")
    model.lm_head = StreamedLinear(checkpoint, "lm_head.weight", model.lm_head.out_features)

    units = ["model.visual.patch_embed", "model.visual.pos_embed", "model.visual.merger", "model.language_model.norm"]
    units += [f"model.visual.blocks.{i}" for i in range(len(visual.blocks))]
    units += [f"model.language_model.layers.{i}" for i in range(len(lm.layers))]
    def release(module, _args, _output):
        module.to("meta")

    for unit in units:

        def materialise(module, _args, prefix=unit + "."):
            state = {name: checkpoint.read(prefix + name) for name in module.state_dict()}
            module.load_state_dict(state, assign=True)

        block = model.get_submodule(unit)
        block.register_forward_pre_hook(materialise)
        block.register_forward_hook(release)

    streamed = tuple(unit + "." for unit in units)
    uncovered = [name for name, _ in model.named_parameters() if not name.startswith(streamed)]
    assert not uncovered, f"parameters no streamed module reads: {uncovered}"
    assert not any(b.is_meta for b in model.buffers()), "a buffer was left on the meta device"
    return model


def record_cache(cache, layer_types: list[str], put, batched: bool) -> None:
    """Every layer's cache state as a tap (`cache.{i}.*`), cloned: decode steps update the
    states in place. One sequence drops the batch axis; a batch keeps it."""
    row = (lambda t: t.clone()) if batched else (lambda t: t[0].clone())
    for i, kind in enumerate(layer_types):
        layer = cache.layers[i]
        if kind == "linear_attention":
            put(f"cache.{i}.conv", row(layer.conv_states[0]))
            put(f"cache.{i}.recurrent", row(layer.recurrent_states[0]))
        else:
            put(f"cache.{i}.key", row(layer.keys))
            put(f"cache.{i}.value", row(layer.values))


def record_generation(
    model: Qwen3_5ForConditionalGeneration,
    inputs,
    rec: Recorder,
    steps: int,
    top_k: int | None,
    batched: bool = False,
    pad_token_id: int | None = None,
) -> None:
    """Greedy `generate` as users run it (`do_sample=False`, cache on), recording the cache
    right after the prefill (`cache.*`) and each step's logits and token (`gen.*`).

    The cache object is updated in place by every decode step (the linear-attention states
    are `copy_`-ed into), so its states are cloned by a forward hook on the first call, the
    prefill, before any step touches them. Step 0's logits are the prefill's last position.
    A batch keeps its batch axis, and its finished rows are fed `pad_token_id`.
    """
    layer_types = model.config.text_config.layer_types
    seen = {"calls": 0}

    def after_prefill(_module, _args, kwargs, output):
        seen["calls"] += 1
        if seen["calls"] != 1:
            return
        cache = output.past_key_values if output.past_key_values is not None else kwargs["past_key_values"]
        record_cache(cache, layer_types, rec.put, batched)

    handle = model.register_forward_hook(after_prefill, with_kwargs=True)
    pad = {"pad_token_id": pad_token_id} if pad_token_id is not None else {}
    with torch.no_grad():
        out = model.generate(
            **inputs,
            do_sample=False,
            max_new_tokens=steps,
            use_cache=True,
            return_dict_in_generate=True,
            output_logits=True,
            **pad,
        )
    handle.remove()
    if seen["calls"] == 0:
        raise RuntimeError("generate never called the model")
    prompt_len = inputs["input_ids"].shape[1]
    if batched:
        tokens = out.sequences[:, prompt_len:]
        logits = torch.stack(list(out.logits), dim=1)  # [batch, steps, vocab]
        steps_made = tokens.shape[1]
    else:
        tokens = out.sequences[0, prompt_len:]
        logits = torch.stack([step[0] for step in out.logits])  # [steps, vocab], before any processor
        steps_made = tokens.shape[0]
    if steps_made != len(out.logits):
        raise RuntimeError(f"generate made {steps_made} tokens but {len(out.logits)} logit rows")
    if steps_made < steps:
        # An end-of-sequence token stops generate early, as it stops users' runs: fewer steps.
        print(f"note: generate stopped at an end-of-sequence token after {steps_made} of {steps} steps", file=sys.stderr)
    rec.put("gen.tokens", tokens)
    if top_k is None:
        rec.put("gen.logits", logits)
    else:
        values, ids = torch.topk(logits, top_k, dim=-1)
        rec.put("gen.top_ids", ids)
        rec.put("gen.top_logits", values)


def open_image(path, loader: str):
    """How the case's loader turns a file into the PIL image the processor sees: opened as is
    (its convert_to_rgb composites transparency onto white) or through load_image
    (exif_transpose, then convert("RGB"), which drops alpha)."""
    if loader == "processor":
        return Image.open(path)
    if loader == "load_image":
        return load_image(str(path))
    sys.exit(f"error: unknown loader {loader!r} (processor or load_image)")


def hf_messages(messages: list[dict], loader: str, videos: list | None = None) -> tuple[list[dict], list]:
    """The case's messages as `apply_chat_template` takes them (an image item is `{"type":
    "image"}`, a video item `{"type": "video"}`), and the images in the order the items hold
    them. The video items (their `path` and a frame folder's `fps`) are appended to `videos`."""
    converted, images = [], []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            items = []
            for item in content:
                if item["type"] == "image":
                    images.append(open_image(item["path"], loader))
                    items.append({"type": "image"})
                elif item["type"] == "video":
                    if videos is None:
                        sys.exit("error: this request cannot carry videos")
                    videos.append(item)
                    items.append({"type": "video"})
                else:
                    items.append({"type": "text", "text": item["text"]})
            content = items
        converted.append({"role": message["role"], "content": content})
    return converted, images


def decode_video(item: dict) -> tuple[np.ndarray, dict]:
    """A video item's frames ([frames, height, width, 3] uint8) and metadata, every frame:
    a file as `read_video_pyav` decodes it (what the processor's `fetch_videos` would give with
    the PyAV backend), or a folder's PNG frames in name order through `load_image` (what it does
    to a list of frame paths) at the manifest's frame rate."""
    path = Path(item["path"])
    if path.is_dir():
        if item.get("fps") is None:
            sys.exit(f"error: {path}: a folder of frames needs its frame rate (`fps` of its [videos] entry)")
        files = sorted((f for f in path.iterdir() if f.suffix.lower() == ".png" and f.is_file()), key=lambda f: f.name)
        if not files:
            sys.exit(f"error: {path}: the frame folder holds no PNG frames")
        frames = np.stack([np.array(load_image(str(f))) for f in files])
        fps = float(item["fps"])
        metadata = {
            "total_num_frames": len(files),
            "fps": fps,
            "width": frames.shape[2],
            "height": frames.shape[1],
            "duration": len(files) / fps,
            "frames_indices": list(range(len(files))),
        }
        return frames, metadata
    if item.get("fps") is not None:
        sys.exit(f"error: {path}: a video file has its own frame rate; give `fps` only for a folder of frames")
    every_frame = lambda metadata, **_: np.arange(metadata.total_num_frames)  # noqa: E731
    frames, metadata = load_video(str(path), backend="pyav", sample_indices_fn=every_frame)
    return frames, dict(metadata)


def video_kwargs(items: list[dict]) -> tuple[dict, list[np.ndarray]]:
    """The processor's keyword arguments for the videos (none without videos), and the decoded
    frames of each, to cut the sampled ones from once the processor has chosen them."""
    if not items:
        return {}, []
    decoded = [decode_video(item) for item in items]
    kwargs = {
        "videos": [frames for frames, _ in decoded],
        "video_metadata": [metadata for _, metadata in decoded],
        "return_metadata": True,
    }
    return kwargs, [frames for frames, _ in decoded]


def record_videos(inputs, frames: list[np.ndarray], rec: Recorder) -> None:
    """The video inputs' taps (grids, the sampled frames as decoded, the patch rows); takes the
    metadata out of `inputs`, which the model does not accept."""
    metadata = inputs.pop("video_metadata", None)
    if "pixel_values_videos" not in inputs:
        return
    rec.put("input.video_grid_thw", inputs["video_grid_thw"])
    sampled = [video[np.asarray(meta.frames_indices)] for video, meta in zip(frames, metadata)]
    rec.put("input.video_frames", torch.from_numpy(np.concatenate([f.reshape(-1, 3) for f in sampled])))
    rec.put("input.pixel_values_videos", inputs["pixel_values_videos"])


def request_text(
    processor, request: dict, loader: str, add_generation_prompt: bool = True, videos: list | None = None
) -> tuple[str, list]:
    """One request's rendered prompt and its images: a user message (the images, then the
    prompt) or a conversation (its messages, with the chat template's arguments; its video
    items are appended to `videos`)."""
    if request.get("request", "single") == "single":
        images = [open_image(p, loader) for p in request["images"]]
        messages, kwargs = build_messages(len(images), request["prompt"]), {}
    else:
        messages, images = hf_messages(request["messages"], loader, videos)
        kwargs = request.get("chat_template_kwargs") or {}
    text = processor.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
    )
    return text, images


def capture_single(model, processor, case: dict, rec: Recorder, stream: bool) -> str:
    """One request, one forward pass with every tap's hook, then (with `generate`) greedy
    generation as a user runs it."""
    videos = []
    text, images = request_text(processor, case, case.get("loader", "processor"), videos=videos)
    kwargs = {"images": images} if images else {}
    extra, frames = video_kwargs(videos)
    inputs = processor(text=[text], return_tensors="pt", **kwargs, **extra)

    rec.put("input.input_ids", inputs["input_ids"][0])
    if images:
        rec.put("input.image_grid_thw", inputs["image_grid_thw"])
        rec.put("input.pixel_values", inputs["pixel_values"])
    record_videos(inputs, frames, rec)

    handles = attach_hooks(model, rec, model.config.image_token_id, inputs["input_ids"])
    with torch.no_grad():
        # The streamed head computes only the last position: the whole [seq, vocab] is never needed.
        keep = {"logits_to_keep": 1} if stream else {}
        output = model(**inputs, use_cache=False, **keep)
    for h in handles:
        h.remove()
    rec.put("lm.logits_last", output.logits[0, -1])
    if case.get("generate"):
        # After the taps' hooks are gone: generation is its own run, as a user starts it.
        record_generation(model, inputs, rec, case["generate"], case.get("gen_top_k"))
    return text


def capture_batch(model, processor, case: dict, rec: Recorder) -> str:
    """The member cases' requests as one batch, left-padded by the processor
    (`padding_side="left"`, the tokenizer's pad token), through one forward pass with every tap's
    hook (taps keep their batch axis) and greedy generation, whose finished rows are fed the
    pad token. The reference is refused where it is known to be wrong."""
    loader = case.get("loader", "processor")
    texts, images = [], []
    for member in case["batch"]:
        text, member_images = request_text(processor, member, loader)
        texts.append(text)
        images.extend(member_images)
    if len(texts) < 2:
        # transformers PR #46773 (open): a batch of one with padding is never masked in the Gated
        # DeltaNet, so the padding changes the logits.
        sys.exit("error: a batch of one row is refused (transformers PR #46773: its padding is not masked)")
    processor.tokenizer.padding_side = "left"
    kwargs = {"images": images} if images else {}
    inputs = processor(text=texts, return_tensors="pt", padding=True, **kwargs)
    mask = inputs["attention_mask"]
    if bool((mask[:, -1] == 0).any()):
        # Right padding is not supported by the reference's linear attention.
        sys.exit("error: right padding is refused (the reference's Gated DeltaNet supports left padding only)")

    rec.put("input.input_ids", inputs["input_ids"])
    rec.put("input.attention_mask", mask)
    if images:
        rec.put("input.image_grid_thw", inputs["image_grid_thw"])
        rec.put("input.pixel_values", inputs["pixel_values"])
    # The positions `generate` gives a padded batch: get_rope_index over each row's tokens (the
    # padding left at 0), the text row counting the mask. A plain forward pass would count a
    # text-only batch's padding as positions (arange), which generate does not.
    positions, _ = model.model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs.get("image_grid_thw"),
        attention_mask=mask,
    )
    text_positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)[None]
    position_ids = torch.cat([text_positions, positions], dim=0)
    handles = attach_hooks(model, rec, model.config.image_token_id, inputs["input_ids"], batched=True)
    with torch.no_grad():
        output = model(**inputs, position_ids=position_ids, use_cache=False)
    for h in handles:
        h.remove()
    rec.put("lm.logits_last", output.logits[:, -1])
    if case.get("generate"):
        pad = processor.tokenizer.pad_token_id
        record_generation(model, inputs, rec, case["generate"], case.get("gen_top_k"), batched=True, pad_token_id=pad)
    return "\n".join(texts)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Part:
    """What one part of a case (a turn, a suffix) records: its prompt's ids, the cache after its
    prefill, the logits at the prompt's last position, each step's logits and the tokens."""

    def __init__(self, rec: Recorder, name: str) -> None:
        self.rec, self.name = rec, name

    def put(self, tap: str, value: torch.Tensor) -> None:
        self.rec.put(f"{self.name}/{tap}", value)


def generate_part(model, inputs: dict, part: Part, steps: int, cache=None):
    """`generate` on `inputs` (continuing `cache` when given), recording the part's cache after
    the prefill, its step logits and tokens; returns the tokens and the cache after them."""
    layer_types = model.config.text_config.layer_types
    calls = {"n": 0}

    def after_prefill(_module, _args, kwargs, output):
        calls["n"] += 1
        if calls["n"] != 1:
            return
        cache = output.past_key_values if output.past_key_values is not None else kwargs["past_key_values"]
        record_cache(cache, layer_types, part.put, batched=False)

    handle = model.register_forward_hook(after_prefill, with_kwargs=True)
    extra = {"past_key_values": cache} if cache is not None else {}
    with torch.no_grad():
        out = model.generate(
            **inputs,
            **extra,
            do_sample=False,
            max_new_tokens=steps,
            use_cache=True,
            return_dict_in_generate=True,
            output_logits=True,
        )
    handle.remove()
    prompt_len = inputs["input_ids"].shape[1]
    tokens = out.sequences[0, prompt_len:]
    logits = torch.stack([step[0] for step in out.logits])
    part.put("lm.logits_last", logits[0])
    part.put("gen.logits", logits)
    part.put("gen.tokens", tokens)
    return tokens.tolist(), out.past_key_values


def capture_turns(model, processor, case: dict, rec: Recorder) -> str:
    """A conversation fed turn by turn, as a chat server runs it. Each turn's messages are
    appended and the whole conversation is rendered again; its prompt resumes the latest cache
    it still repeats (the live cache, else the latest snapshot kept at a turn boundary — after
    a turn's messages, before its generation prompt — else none: a Gated DeltaNet state cannot
    be rolled back token by token); the rest up to the turn boundary is prefilled with a
    forward pass (its multimodal positions given, computed over the whole conversation, and the
    features of the images it holds), a snapshot is kept, and `generate` continues on the cache
    from there. The reply (the tokens decoded, special tokens skipped) joins the history."""
    loader, steps = case.get("loader", "processor"), case["generate"]
    kwargs = case.get("chat_template_kwargs") or {}
    history: list[dict] = []
    cache, cached, snapshots, texts = None, [], [], []
    for t, turn in enumerate(case["turns"]):
        part = Part(rec, f"turn.{t}")
        history.extend(turn)
        messages, images = hf_messages(history, loader)
        image_kwargs = {"images": images} if images else {}
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
        closed = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False, **kwargs)
        inputs = processor(text=[text], return_tensors="pt", **image_kwargs)
        ids = inputs["input_ids"][0].tolist()
        boundary = common_prefix(processor(text=[closed], return_tensors="pt", **image_kwargs)["input_ids"][0].tolist(), ids)
        part.put("input.input_ids", inputs["input_ids"][0])
        texts.append(text)

        lcp = common_prefix(cached, ids)
        if len(cached) > lcp:
            fitting = [s for s in snapshots if len(s[0]) <= lcp]
            cached, cache = (list(fitting[-1][0]), copy.deepcopy(fitting[-1][1])) if fitting else ([], None)
        start = len(cached)
        if start < boundary:
            cache = prefill_range(model, inputs, cache, start, boundary)
            cached = ids[:boundary]
            snapshots.append((list(cached), copy.deepcopy(cache)))
        # The cache holds every image by now (a turn boundary follows the turn's messages): the
        # generation prompt that generate prefills has none, so no pixels go with it.
        rest = {k: v for k, v in inputs.items() if k != "pixel_values"}
        tokens, cache = generate_part(model, rest, part, steps, cache)
        cached = ids + tokens[:-1]
        history.append({"role": "assistant", "content": processor.decode(tokens, skip_special_tokens=True)})
    return "\n----\n".join(texts)


def prefill_range(model, inputs: dict, cache, start: int, stop: int):
    """Prefills tokens [start, stop) of a prompt on top of `cache` (which holds the first
    `start`): their multimodal positions computed over the whole prompt as `generate` computes
    them, and the pixels of the images whose tokens lie in the range. Sets the model's rope
    deltas for the decode steps that follow. Returns the cache."""
    ids = inputs["input_ids"]
    grids = inputs.get("image_grid_thw")
    mm = inputs["mm_token_type_ids"]
    positions, deltas = model.model.get_rope_index(ids, mm_token_type_ids=mm, image_grid_thw=grids)
    text_positions = torch.arange(ids.shape[1]).view(1, 1, -1)
    position_ids = torch.cat([text_positions, positions], dim=0)[:, :, start:stop]
    model.model.rope_deltas = deltas
    extra = {}
    if grids is not None:
        # The k-th run of image tokens is the k-th image; the range holds whole images.
        image_token = model.config.image_token_id
        runs, i, row = [], 0, 0
        seq = ids[0].tolist()
        sizes = [int(g.prod()) for g in grids]
        merge = model.config.vision_config.spatial_merge_size
        for k, g in enumerate(grids):
            while seq[i] != image_token:
                i += 1
            n = int(g.prod()) // (merge * merge)
            runs.append((i, i + n, row, row + sizes[k], k))
            i, row = i + n, row + sizes[k]
        inside = [r for r in runs if r[0] >= start and r[1] <= stop]
        if any(r[0] < stop and r[1] > start and r not in inside for r in runs):
            sys.exit("error: a turn boundary cuts an image's tokens")
        if inside:
            extra["pixel_values"] = torch.cat([inputs["pixel_values"][r[2] : r[3]] for r in inside])
            extra["image_grid_thw"] = torch.stack([grids[r[4]] for r in inside])
    with torch.no_grad():
        output = model(
            input_ids=ids[:, start:stop],
            position_ids=position_ids,
            past_key_values=cache,
            mm_token_type_ids=mm[:, start:stop],
            use_cache=True,
            **extra,
        )
    return output.past_key_values


def capture_prefix(model, processor, case: dict, rec: Recorder) -> str:
    """A prefix continued by each suffix: the reference runs each prefix + suffix in one pass
    (forward pass and `generate` from an empty cache), which a continued cache must equal."""
    loader, steps = case.get("loader", "processor"), case.get("generate") or 0
    kwargs = case.get("chat_template_kwargs") or {}
    texts = []
    prefix_messages, prefix_images = hf_messages(case["messages"], loader)
    prefix_text = processor.apply_chat_template(prefix_messages, tokenize=False, add_generation_prompt=False, **kwargs)
    prefix = processor(text=[prefix_text], return_tensors="pt", **({"images": prefix_images} if prefix_images else {}))
    prefix_ids = prefix["input_ids"][0].tolist()
    for s, suffix in enumerate(case["suffixes"]):
        part = Part(rec, f"suffix.{s}")
        messages, images = hf_messages(case["messages"] + suffix, loader)
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
        inputs = processor(text=[text], return_tensors="pt", **({"images": images} if images else {}))
        ids = inputs["input_ids"][0].tolist()
        if common_prefix(prefix_ids, ids) < len(prefix_ids):
            sys.exit(
                f"error: the prefix ({len(prefix_ids)} tokens) is not a prefix of prefix + "
                f"suffix {s} as the chat template renders them (they share {common_prefix(prefix_ids, ids)}): the "
                "template renders the prefix's last message differently once more messages follow; end the "
                "prefix with a system or user message"
            )
        part.put("input.input_ids", inputs["input_ids"][0])
        texts.append(text)
        if steps:
            generate_part(model, dict(inputs), part, steps)
        else:
            with torch.no_grad():
                part.put("lm.logits_last", model(**inputs, use_cache=False).logits[0, -1])
    return "\n----\n".join(texts)


def capture(case: dict, out: Path, threads: int, stream: bool) -> None:
    # The notes about optional fused kernels and the loading bar are noise here: the eager
    # reference path is the one we want.
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model_dir = Path(case["model_dir"])
    if not (model_dir / "config.json").is_file():
        sys.exit(f"error: no checkpoint at {model_dir} (config.json missing); run `cargo xtask make-model`")

    dtypes = {"f32": torch.float32, "bf16": torch.bfloat16}
    dtype = dtypes.get(case.get("dtype", "f32"))
    if dtype is None:
        sys.exit(f"error: unknown dtype {case['dtype']!r} (one of {', '.join(dtypes)})")
    processor = AutoProcessor.from_pretrained(model_dir)
    if stream:
        model = streamed_model(model_dir, dtype)
    else:
        cls = model_class(model_dir)
        extra = {"experts_implementation": EXPERTS_IMPLEMENTATION} if cls is Qwen3_5MoeForConditionalGeneration else {}
        model, info = cls.from_pretrained(
            model_dir, dtype=dtype, attn_implementation="eager", output_loading_info=True, **extra
        )
        problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "mismatched_keys")}
        if problems:
            sys.exit(f"error: checkpoint {model_dir} does not match the architecture: {problems}")
        model.eval()

    rec = Recorder()
    request = case.get("request", "single")
    if request in ("single", "conversation"):
        text = capture_single(model, processor, case, rec, stream)
    elif request == "batch":
        text = capture_batch(model, processor, case, rec)
    elif request == "turns":
        text = capture_turns(model, processor, case, rec)
    elif request == "prefix_cache":
        text = capture_prefix(model, processor, case, rec)
    else:
        sys.exit(f"error: unknown request {request!r}")

    listing = []
    for name, array in sorted(rec.taps.items(), key=lambda item: dump_rank(item[0])):
        path = out / f"{name}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, array, allow_pickle=False)
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
            "av": importlib.metadata.version("av"),
        },
        "threads": threads,
        "stream": stream,
        "experts_implementation": getattr(model.config.get_text_config(), "_experts_implementation", None)
        or getattr(model.config, "_experts_implementation", None),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "capture.json").write_text(json.dumps(meta, indent=2) + "\n")


def dump_rank(name: str) -> tuple:
    """Sort key of a dump: the whole case's taps in pipeline order, then each part's."""
    if "/" in name:
        part, tap = name.split("/")
        kind, index = part.split(".")
        return (1, kind, int(index)) + pipeline_rank(tap)
    return (0, "", 0) + pipeline_rank(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--case-json", required=True, help="the case: model_dir, images, prompt, loader, dtype, generate (steps), gen_top_k"
    )
    parser.add_argument("--out", required=True, type=Path, help="folder for the .npy taps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (fixed so reruns match bytes)")
    parser.add_argument(
        "--stream", action="store_true", help="read the weights block by block (bounded memory, for 27B checkpoints)"
    )
    args = parser.parse_args()
    capture(json.loads(args.case_json), args.out, args.threads, args.stream)


if __name__ == "__main__":
    main()
