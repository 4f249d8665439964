"""Writes a full-width stand-in of Qwen3.6-27B: every width of the release, only four layers.

Real Qwen3.6-27B weights are not reachable from these machines, yet the streamed capture
(`capture.py --stream`) and the Rust-versus-transformers benchmark must be exercised at the
release's real sizes: a 248320-row vocabulary, hidden 5120, MLP 17408, vision hidden 1152.
The stand-in is the published configuration (script/qwen3.6-27b.config.json) with
`text_config.num_hidden_layers = 4` (transformers derives the layer types from
`full_attention_interval` 4: three linear-attention layers, then one full-attention layer)
and `vision_config.depth = 4`: 4.18 G parameters (8.4 GB in bf16, 16.7 GB in float32), plus
0.42 G in the `mtp.*` head.

It is laid out like the release, so that loaders meet what they will meet on the real
checkpoint:

* tensors stored as bf16 in `model-0000i-of-0000N.safetensors` shards of at most 2 GiB (a
  tensor larger than that gets a shard of its own), with `model.safetensors.index.json`;
* the multi-token-prediction head `mtp.*` that the release ships and the forward pass
  ignores (loaders must skip it, not fail on it);
* the tokenizer gives the special tokens the ids the configuration names (<|image_pad|> =
  248056, <|im_end|> = 248044, ...), although its ordinary vocabulary is make_model.py's tiny
  byte-level BPE, so the ids in between are unused;
* the image processor has the release's pixel limits, so a 448x448 image stays 448x448
  (28x28 patches, 196 image tokens).

Values follow make_model.py's `init_tensor` rules (so activations stay of order one through
the layers) from a fixed seed, and every shard is written with sorted keys, so two runs write
the same bytes. The generator holds at most one shard (or one oversized tensor) in memory.
Besides the checkpoint it writes `standin.json` with the parameter and byte counts.

`--kind moe` writes the MoE stand-in instead: Qwen3.6-35B-A3B's published configuration
(script/qwen3.6-35b-a3b.config.json: hidden 2048, 16 heads over 2 KV heads of 256, 256 routed
experts of 512 with 8 per token and a shared expert of 512, linear attention with 16 key and 32
value heads, the vision tower of 1152 with out_hidden_size 2048) cut the same way, to 4 decoder
layers (three Gated DeltaNet, one full attention, each with its sparse MoE block) and 4 vision
blocks: 4.48 G parameters (9.0 GB in bf16, 17.9 GB in float32), plus 0.85 G in `mtp.*`, whose
layer is shaped like the full-attention layer (its MoE block included). The routed experts are
in the fused layout of the published files, `mlp.experts.gate_up_proj` [E, 2I, H] (gate rows
first) and `mlp.experts.down_proj` [E, H, I] (transformers' module parameters, which its loader
reads as they are), drawn N(0, 1/fan_in) like every projection. The router is left as drawn
(make_model.py's near ties are the tiny model's business).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

import make_model

RELEASE_CONFIG = Path(__file__).with_name("qwen3.6-27b.config.json")
# The published configuration of each kind of stand-in (`--kind`).
RELEASE_CONFIGS = {"dense": RELEASE_CONFIG, "moe": Path(__file__).with_name("qwen3.6-35b-a3b.config.json")}
# The routed experts in the fused layout: [E, 2I, H] and [E, H, I], drawn N(0, 1/fan_in).
FUSED_EXPERTS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")
TEXT_LAYERS = 4
VISION_DEPTH = 4
# The ids of Qwen3.6's special tokens; the configuration names four of them.
SPECIAL_IDS = {
    "<|endoftext|>": 248043,
    "<|im_end|>": 248044,
    "<|im_start|>": 248045,
    "<|vision_start|>": 248053,
    "<|vision_end|>": 248054,
    "<|image_pad|>": 248056,
    "<|video_pad|>": 248057,
    # Added, not special, in the release (make_model.THINK_TOKENS): the chat template writes them.
    "<think>": 248068,
    "</think>": 248069,
}
MAX_SHARD_BYTES = 2 * 1024**3
CHUNK_ELEMENTS = 1 << 24  # float32 elements drawn at a time: 64 MB
CHECK_IMAGE_SIDE = 448  # 28x28 patches of 16 pixels, 14x14 = 196 merged image tokens


def standin_config(kind: str = "dense") -> dict:
    """The release configuration with the layer counts cut; the key layout is kept."""
    config = json.loads(RELEASE_CONFIGS[kind].read_text())
    config["text_config"]["num_hidden_layers"] = TEXT_LAYERS
    config["vision_config"]["depth"] = VISION_DEPTH
    named = {
        "<|im_end|>": config["text_config"]["eos_token_id"],
        "<|image_pad|>": config["image_token_id"],
        "<|video_pad|>": config["video_token_id"],
        "<|vision_start|>": config["vision_start_token_id"],
        "<|vision_end|>": config["vision_end_token_id"],
    }
    assert all(SPECIAL_IDS[t] == i for t, i in named.items()), f"special ids disagree with the config: {named}"
    return config


def tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of the checkpoint: transformers' own names and shapes, plus the `mtp.*` head.

    The `mtp.*` shapes mirror the release's multi-token-prediction head: a projection of the
    concatenated [embedding, hidden state] back to the hidden size, its two input norms, a
    final norm and one decoder layer shaped like the text model's full-attention layers.
    """
    from transformers import (
        Qwen3_5Config,
        Qwen3_5ForConditionalGeneration,
        Qwen3_5MoeConfig,
        Qwen3_5MoeForConditionalGeneration,
    )

    moe = config["model_type"] == "qwen3_5_moe"
    config_class = Qwen3_5MoeConfig if moe else Qwen3_5Config
    model_class = Qwen3_5MoeForConditionalGeneration if moe else Qwen3_5ForConditionalGeneration
    hf_config = config_class(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    with torch.device("meta"):
        skeleton = model_class(hf_config)
    shapes = {name: tuple(p.shape) for name, p in skeleton.state_dict().items()}

    hidden = hf_config.text_config.hidden_size
    full = hf_config.text_config.layer_types.index("full_attention")
    shapes["mtp.fc.weight"] = (hidden, 2 * hidden)
    for norm in ("pre_fc_norm_embedding", "pre_fc_norm_hidden", "norm"):
        shapes[f"mtp.{norm}.weight"] = (hidden,)
    layer = f"model.language_model.layers.{full}."
    for name, shape in list(shapes.items()):
        if name.startswith(layer):
            shapes["mtp.layers.0." + name[len(layer) :]] = shape
    return shapes


def plan_shards(shapes: dict[str, tuple[int, ...]]) -> list[list[str]]:
    """Groups the names, in sorted order, into shards of at most MAX_SHARD_BYTES of bf16."""
    shards: list[list[str]] = []
    size = 0
    for name in sorted(shapes):
        nbytes = 2 * math.prod(shapes[name])
        if not shards or size + nbytes > MAX_SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def draw(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """make_model.init_tensor as bf16, drawn in row chunks so large tensors never exist in f32."""
    out = torch.empty(shape, dtype=torch.bfloat16)
    step = max(1, CHUNK_ELEMENTS // math.prod(shape[1:]))
    fused = name.endswith(FUSED_EXPERTS)
    for start in range(0, shape[0], step):
        stop = min(shape[0], start + step)
        if fused:
            # Each expert's matrix as make_model.init_tensor draws a projection: N(0, 1/fan_in).
            chunk = torch.randn((stop - start, *shape[1:]), generator=gen, dtype=torch.float32) / math.sqrt(shape[-1])
        else:
            chunk = make_model.init_tensor(name, (stop - start, *shape[1:]), gen)
        out[start:stop] = chunk.to(torch.bfloat16)
    return out


def build_tokenizer() -> Tokenizer:
    """make_model.build_tokenizer with the special tokens moved to Qwen3.6's ids.

    `tokenizers` keeps an added token's id only when the model's vocabulary holds the token,
    so the specials are placed into the BPE vocabulary at their ids (sparse ids are allowed)
    and listed as added special tokens with the same ids.
    """
    spec = json.loads(make_model.build_tokenizer().to_str())
    vocab = spec["model"]["vocab"]
    assert max(vocab.values()) < min(SPECIAL_IDS.values()), "the BPE vocabulary reaches the special ids"
    vocab.update(SPECIAL_IDS)
    for added in spec["added_tokens"]:
        added["id"] = SPECIAL_IDS[added["content"]]
    spec["added_tokens"].sort(key=lambda added: added["id"])
    tok = Tokenizer.from_str(json.dumps(spec))
    got = {t: tok.token_to_id(t) for t in SPECIAL_IDS}
    assert got == SPECIAL_IDS, f"special token ids {got}"
    return tok


def write_processor_files(out: Path, config: dict) -> None:
    """Tokenizer, chat template and image processor, as make_model.py writes them."""
    preprocessor = make_model.preprocessor_config()
    preprocessor["size"] = {"longest_edge": 16777216, "shortest_edge": 65536}
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    (out / "chat_template.jinja").write_text(make_model.CHAT_TEMPLATE)
    build_tokenizer().save(str(out / "tokenizer.json"))
    make_model.write_tokenizer_config(out, model_max_length=config["text_config"]["max_position_embeddings"])


def check_processor(out: Path) -> None:
    """The written tokenizer and processor give the real ids and expand the image pads.

    Checked both with `tokenizers` alone (what a Rust loader reads) and with transformers'
    AutoProcessor (what capture.py runs), on a rendered chat prompt with one image.
    """
    from PIL import Image
    from transformers import AutoProcessor

    ids = SPECIAL_IDS
    processor = AutoProcessor.from_pretrained(out)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # <|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>...<|im_end|>\n<|im_start|>assistant\n
    plain = Tokenizer.from_file(str(out / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    start = plain.index(ids["<|vision_start|>"])
    image_span = [ids["<|vision_start|>"], ids["<|image_pad|>"], ids["<|vision_end|>"]]
    assert plain[0] == ids["<|im_start|>"] and plain[start : start + 3] == image_span, plain
    assert plain.count(ids["<|im_start|>"]) == 2 and plain.count(ids["<|im_end|>"]) == 1, plain

    side = CHECK_IMAGE_SIDE
    inputs = processor(text=[text], images=[Image.new("RGB", (side, side))], return_tensors="pt")
    n_pads = (side // 32) ** 2  # 16-pixel patches, merged 2x2
    expected = plain[: start + 1] + [ids["<|image_pad|>"]] * n_pads + plain[start + 2 :]
    assert inputs["input_ids"][0].tolist() == expected, inputs["input_ids"]
    assert inputs["image_grid_thw"][0].tolist() == [1, side // 16, side // 16], inputs["image_grid_thw"]
    print(f"checked tokenizer and processor: {n_pads} image tokens of id {ids['<|image_pad|>']}", file=sys.stderr)


def write_standin(out: Path, kind: str = "dense") -> None:
    started = time.monotonic()
    config = standin_config(kind)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_processor_files(out, config)
    check_processor(out)

    shapes = tensor_shapes(config)
    shards = plan_shards(shapes)
    gen = torch.Generator().manual_seed(make_model.SEED)
    weight_map = {}
    for i, names in enumerate(shards, start=1):
        filename = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        tensors = {name: draw(name, shapes[name], gen) for name in names}
        save_file(tensors, str(out / filename), metadata={"format": "pt"})
        del tensors
        weight_map.update({name: filename for name in names})
        print(f"  {filename}: {len(names)} tensors", file=sys.stderr)

    parameters = sum(math.prod(s) for s in shapes.values())
    without_mtp = sum(math.prod(s) for n, s in shapes.items() if not n.startswith("mtp."))
    index = {"metadata": {"total_size": 2 * parameters}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    summary = {
        "parameters": parameters,
        "parameters_without_mtp": without_mtp,
        "bf16_bytes": 2 * parameters,
        "f32_bytes_without_mtp": 4 * without_mtp,
    }
    (out / "standin.json").write_text(json.dumps(summary, indent=2) + "\n")
    written = sum(f.stat().st_size for f in out.iterdir())
    print(
        f"wrote {out}: {parameters} parameters ({without_mtp} without mtp.*), {len(shards)} shards, "
        f"{2 * parameters} bytes of bf16 tensor data, {written} bytes in all; float32 size without mtp.* "
        f"{4 * without_mtp} bytes; {time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to (re)write the stand-in into")
    parser.add_argument(
        "--kind",
        choices=sorted(RELEASE_CONFIGS),
        default="dense",
        help="Qwen3.6-27B's configuration (dense, the default) or Qwen3.6-35B-A3B's (moe)",
    )
    args = parser.parse_args()
    make_model.write_atomically(args.out, lambda out: write_standin(out, args.kind))


if __name__ == "__main__":
    main()
