"""Writes the iteration model: a tiny `Qwen3_5ForConditionalGeneration` checkpoint.

Run through `cargo xtask make-model`, which passes the output folder. The checkpoint keeps
Qwen3.6-27B's per-head geometry (see script/qwen3.6-27b.config.json) and cuts
only the counts (layers, heads, widths, vocabulary) so that it stays under 10 MB in bf16:

* text: head_dim 256, partial rotary factor 0.25 (64 rotary dims), interleaved mrope_section
  [11, 11, 10], rope_theta 1e7, 6 query heads per KV head, linear-attention heads of 128 dims
  with 3 value heads per key head, conv kernel 4, full_attention_interval 4;
* vision: head_dim 72, patch 16, temporal patch 2, spatial merge 2, 2304 learned position
  embeddings (48x48 grid), gelu_pytorch_tanh.

Two KV heads and two linear-attention key heads (not one) so that a wrong grouping order of
query heads onto KV heads, or of value heads onto key heads, changes the numbers.

Weight scales (why activations stay of order one and every tensor is visible in the logits):

* every projection matrix is N(0, 1/fan_in): a unit-variance input gives a unit-variance
  output, so neither the residual stream nor the vision tower decays or explodes over depth;
* embeddings and the learned position table are N(0, 1), of the same order as the patch
  projection of pixels in [-1, 1], so a position-embedding bug moves everything after
  `vision.pos_embed` by O(1) (both are then scaled by 2^-3, see below: the first LayerNorm
  restores the order of one);
* norm weights are not left at their neutral value (zeros for the zero-centred RMSNorm,
  ones for LayerNorm and the gated RMSNorm) but perturbed by N(0, 0.1^2); biases are
  N(0, 0.1^2): a missing bias or a norm without its (1 + w) offset is an O(0.1) change;
* the Gated DeltaNet decay A = exp(A_log) is drawn from U(0.02, 1) rather than the training
  init U(0.01, 16): with A up to 16 the state would be forgotten within a token, and the
  chunked prefill (across 64-token chunks) would go untested. dt_bias is 1 + N(0, 0.1^2);
* lm_head is N(0, 4/hidden) so the logits spread over a few units and their argmax is
  decided by more than rounding.

Constants made visible (`expose_constants`, applied after the draw, so `init_tensor` and the
stand-in that reuses it are unchanged). crates/replay/tests/constants.rs changes each numerical
constant of the forward pass tenfold and fails if no tap notices (docs/CONSTANTS.md lists
them). With the scales above no activation came near the regime where four
of them matter: the l2norm eps and the softplus threshold moved no tap beyond the tolerance,
the RMSNorm and vision LayerNorm eps one or two elements of one tap, by at most 1.3 times
the tolerance. A few weights are changed so that one head or one input sits in that regime;
the scale factors are powers of two, so a scaled bf16 tensor is exactly the drawn one times
its factor:

* the RMSNorm eps (1e-6): every zero-centred RMSNorm input had a mean square of 0.37 or more
  (chelsea). Query head 0 of the full-attention layer has its q_proj rows scaled by 2^-10, so
  its q has a mean square of 0.7e-6 to 1.2e-6 and q_norm divides by sqrt(ms + eps) with eps
  about half of the sum;
* the delta rule's l2norm eps (1e-6): the squared norms of q and k were 4 to 114. Key head 0
  of the first Gated DeltaNet has its in_proj_qkv key rows scaled by 2^-12, so its keys
  (SiLU of a conv of values near 2^-12, where SiLU is nearly linear) have a squared norm of
  0.6e-6 to 2.8e-6 and l2norm leaves them shorter than unit length by a factor that depends
  on eps;
* the softplus threshold (20): softplus(x) and x differ by log1p(exp(-x)) < 2.1e-9 for
  x > 20, below f32's resolution, so a threshold of 200 changes nothing until exp(x)
  overflows f32 at x > 88.7 (softplus then gives inf and the decay -inf). Value head 5 of the
  first Gated DeltaNet gets dt_bias = 100, so a + dt_bias is 98 to 102 (a is of order one),
  and A = 0.002 (A_log = log 0.002), so its decay per token, exp(-A * 100) = 0.82, stays in
  the range of the other heads;
* the vision LayerNorm eps (1e-6): the tower's first LayerNorm saw rows of variance 0.3 and
  more. The patch embedding (weight and bias) and the position table are scaled by 2^-3, so
  the tower's input rows have a variance of 0.005 to 0.02, where eps shows in the first
  block (LayerNorm divides the scale out again; the first block's residual keeps the input
  at 1/8 of its former weight against the attention's output).

The tokenizer is a byte-level BPE trained on a fixed corpus (below) with Qwen's
pre-tokenizer, normalizer and special tokens; the chat template is a Qwen3.6-style template (system message, thinking on and off, the
reasoning of earlier turns dropped).
Everything is derived from a fixed seed, and the safetensors file is written with sorted
keys, so running the generator twice writes the same bytes.

`--kind moe` writes the MoE iteration model instead, a tiny `Qwen3_5MoeForConditionalGeneration`
(model_type `qwen3_5_moe`) with Qwen3.6-35B-A3B's per-head geometry (see
script/qwen3.6-35b-a3b.config.json: head_dim 256 with 2 KV heads, linear-attention heads of 128
with 2 value heads per key head, the same rotary and layer pattern) and reduced counts, so that it
stays near 2 MB in bf16 (`MOE_*` below). The tokenizer, chat template and image preprocessor are the
dense model's, the vision tower a narrower one (one head of 72, a 24 x 24 position table); the
text hidden size is 64 (the embedding table and the experts are most of the bytes), with 4 query heads (2 per KV
head) and 1 linear key head. Every decoder layer has a sparse MoE block: 8 routed experts of 32,
4 per token, and a shared expert of 32. It is drawn with the same rules and seed as the dense
model (experts' matrices N(0, 1/fan_in) like every projection; `expose_constants` is not applied,
the dense model covers the constants). The routed experts are written per expert
(`mlp.experts.{e}.gate_proj.weight`, `up_proj`, `down_proj`), as transformers 5.23's
`save_pretrained` writes them; `--experts-layout fused` writes the same values as the module's
own `mlp.experts.gate_up_proj` [E, 2I, H] (gate rows first) and `down_proj` [E, H, I], the layout of
the published 35B-A3B files.

Near ties in the routing (`make_near_ties`): in layer l, router row 2l + 1 is a copy of row 2l
with one entry moved by one bf16 ulp, so those two experts' logits differ by about 1e-3 relative
or less for every token (in bf16 they are often equal): wherever the pair sits at the k-th and
(k+1)-th place the choice between them is within bf16 noise, and an exact tie in bf16 is decided
by `torch.topk`'s tie order.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

SEED = 20261129

# The pre-tokenizer regex of transformers' Qwen3_5Tokenizer.
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"""
    r"""| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
BPE_VOCAB = 1000  # ordinary tokens (256 bytes + merges); special tokens follow
VOCAB_SIZE = 1024  # embedding rows: BPE_VOCAB + specials, padded like the release pads its vocabulary

CORPUS = """\
Describe this image in one sentence. What is in the picture? A cat sits on a wooden floor
and looks at the camera with green eyes. An astronaut in an orange suit smiles in front of
the flag. The rocket stands on the launch pad under a blue sky. The photographer took the
picture in the morning light. Compare the two images and tell me what they have in common.
Count the objects, name the colours, and explain the scene step by step. The quick brown fox
jumps over the lazy dog. Numbers like 1, 2, 3, 42 and 2026 appear in text too. Parity tests
compare every intermediate tensor of the model with the reference implementation, layer by
layer, so that a wrong rotary base, a shifted position embedding or a missing bias shows up
as a failure at the stage where it enters. The linear attention layers keep a recurrent state
that decays over time, and the full attention layers look at every earlier token.
"""

# Added (not special) tokens of the Qwen3.5 / Qwen3.6 tokenizers that the chat template writes.
THINK_TOKENS = ["<think>", "</think>"]

# A Qwen3.6-style chat template, written for this model from the published template's documented
# behaviour (transformers renders it with jinja2, trim_blocks and lstrip_blocks; Rust with minijinja):
# - a system message, and content as a string or a list of text / image / video items, in order;
# - the reasoning of an assistant turn is its `reasoning_content`, or the part of its content
#   before `</think>`; it is kept only for assistant turns after the last user message (a turn
#   being continued), and dropped from earlier turns of the history;
# - the generation prompt opens the assistant turn; `enable_thinking=False` closes an empty
#   think block, `enable_thinking=True` opens one (`<think>\n`), as Qwen3.6 does in thinking mode.
#   Without the argument the prompt is left open, as this model's first template left it, so the
#   single-message cases render as before.
CHAT_TEMPLATE = """\
{%- macro render(content) -%}
    {%- if content is string -%}
        {{- content -}}
    {%- else -%}
        {%- for item in content -%}
            {%- if item.type == 'image' -%}
                {{- '<|vision_start|><|image_pad|><|vision_end|>' -}}
            {%- elif item.type == 'video' -%}
                {{- '<|vision_start|><|video_pad|><|vision_end|>' -}}
            {%- elif item.type == 'text' -%}
                {{- item.text -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
{%- set ns = namespace(last_query=-1) -%}
{%- for message in messages -%}
    {%- if message.role == 'user' -%}
        {%- set ns.last_query = loop.index0 -%}
    {%- endif -%}
{%- endfor -%}
{%- for message in messages -%}
    {%- set content = render(message.content) -%}
    {%- if message.role == 'assistant' -%}
        {%- set reasoning = '' -%}
        {%- if message.reasoning_content is string -%}
            {%- set reasoning = message.reasoning_content -%}
        {%- elif '</think>' in content -%}
            {%- set reasoning = content.split('</think>')[0].split('<think>')[-1] -%}
            {%- set content = content.split('</think>')[-1] -%}
        {%- endif -%}
        {{- '<|im_start|>assistant\n' -}}
        {%- if loop.index0 > ns.last_query -%}
            {{- '<think>\n' + reasoning.strip('\n') + '\n</think>\n\n' -}}
        {%- endif -%}
        {{- content.lstrip('\n') + '<|im_end|>\n' -}}
    {%- else -%}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>\n' -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\n' -}}
    {%- if enable_thinking is defined and enable_thinking is false -%}
        {{- '<think>\n\n</think>\n\n' -}}
    {%- elif enable_thinking is defined and enable_thinking -%}
        {{- '<think>\n' -}}
    {%- endif -%}
{%- endif -%}
"""


def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator([CORPUS] * 4, trainer=trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    return tok


def text_config() -> dict:
    return {
        "model_type": "qwen3_5_text",
        "attention_bias": False,
        "attn_output_gate": True,
        "eos_token_id": None,  # filled from the tokenizer
        "full_attention_interval": 4,
        "head_dim": 256,
        "hidden_act": "silu",
        "hidden_size": 128,
        "intermediate_size": 128,
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 128,
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 6,
        "linear_value_head_dim": 128,
        "mamba_ssm_dtype": "float32",
        "max_position_embeddings": 4096,
        "num_attention_heads": 12,
        "num_hidden_layers": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_parameters": {
            "mrope_interleaved": True,
            "mrope_section": [11, 11, 10],
            "partial_rotary_factor": 0.25,
            "rope_theta": 10000000,
            "rope_type": "default",
        },
        "tie_word_embeddings": False,
        "vocab_size": VOCAB_SIZE,
    }


def vision_config() -> dict:
    return {
        "deepstack_visual_indexes": [],
        "depth": 2,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_size": 144,
        "in_channels": 3,
        "intermediate_size": 144,
        "num_heads": 2,
        "num_position_embeddings": 2304,
        "out_hidden_size": 128,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }


def preprocessor_config() -> dict:
    # min/max pixels keep every case (and fixtures/) small: chelsea (451x300) becomes 192x96
    # (72 patches), and an image under 128x128 is scaled up to the minimum.
    return {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "Qwen2VLImageProcessor",
        "image_std": [0.5, 0.5, 0.5],
        "merge_size": 2,
        "patch_size": 16,
        "processor_class": "Qwen3VLProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"longest_edge": 24576, "shortest_edge": 16384},
        "temporal_patch_size": 2,
    }


def video_preprocessor_config() -> dict:
    # Qwen3VLVideoProcessor, laid out as the published Qwen3.5 / 3.6 repositories ship it
    # (video_preprocessor_config.json), with a small pixel budget over the whole clip (t*h*w) so
    # that the video cases and fixtures/ stay small: the 96x64 counter clip's 7 sampled frames
    # keep 64x96 (4 temporal patches of 4x6 patches), a 64x48 clip of 4 frames becomes 64x64.
    # Sampling keeps the class defaults (2 frames per second, 4 to 768 frames).
    return {
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "merge_size": 2,
        "patch_size": 16,
        "processor_class": "Qwen3VLProcessor",
        "size": {"longest_edge": 49152, "shortest_edge": 4096},
        "temporal_patch_size": 2,
        "video_processor_type": "Qwen3VLVideoProcessor",
    }


def init_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """One rule per kind of tensor; see the module docstring for why each scale."""

    def normal(std: float) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std

    leaf = name.rsplit(".", 1)[-1]
    if name.endswith("embed_tokens.weight") or name.endswith("pos_embed.weight"):
        return normal(1.0)
    if name == "lm_head.weight":
        return normal(2.0 / math.sqrt(shape[1]))
    if leaf == "A_log":
        uniform = torch.rand(shape, generator=gen, dtype=torch.float32) * 0.98 + 0.02
        return uniform.log()
    if leaf == "dt_bias":
        return 1.0 + normal(0.1)
    if leaf == "bias":
        return normal(0.1)
    is_norm = any(part in name for part in ("norm", "layernorm"))
    if is_norm and leaf == "weight" and len(shape) == 1:
        # Zero-centred RMSNorm (Qwen3_5RMSNorm) stores w with the output scaled by (1 + w);
        # LayerNorm and the gated RMSNorm of the DeltaNet store the scale itself.
        zero_centred = "visual" not in name and "linear_attn.norm" not in name
        return normal(0.1) if zero_centred else 1.0 + normal(0.1)
    if "conv1d" in name:
        return normal(1.0 / math.sqrt(shape[-1]))
    if leaf == "weight" and len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        return normal(1.0 / math.sqrt(fan_in))
    raise ValueError(f"make_model.py has no initialisation rule for {name} {shape}")


# The heads and factors of `expose_constants` (the module docstring says why each).
RMS_EPS_QUERY_HEAD = 0
RMS_EPS_QUERY_SCALE = 2.0**-10
L2NORM_EPS_KEY_HEAD = 0
L2NORM_EPS_KEY_SCALE = 2.0**-12
SOFTPLUS_VALUE_HEAD = 5
SOFTPLUS_DT_BIAS = 100.0  # above 88.7, where exp overflows f32
SOFTPLUS_A = 0.002
VISION_INPUT_SCALE = 2.0**-3


def expose_constants(tensors: dict[str, torch.Tensor], tcfg: dict) -> None:
    """Rescales the few weights that put a head or input in the regime where a constant of
    the forward pass matters (the module docstring says which and why), in place."""
    interval = tcfg["full_attention_interval"]
    layers = range(tcfg["num_hidden_layers"])
    kinds = ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in layers]
    full = f"model.language_model.layers.{kinds.index('full_attention')}."
    linear = f"model.language_model.layers.{kinds.index('linear_attention')}."

    # q_proj's rows are, per head, head_dim query rows then head_dim gate rows.
    head_dim = tcfg["head_dim"]
    q_proj = tensors[full + "self_attn.q_proj.weight"]
    start = RMS_EPS_QUERY_HEAD * 2 * head_dim
    q_proj[start : start + head_dim] *= RMS_EPS_QUERY_SCALE

    # in_proj_qkv's rows are the query heads, then the key heads, then the value heads.
    key_dim, key_heads = tcfg["linear_key_head_dim"], tcfg["linear_num_key_heads"]
    qkv = tensors[linear + "linear_attn.in_proj_qkv.weight"]
    start = key_heads * key_dim + L2NORM_EPS_KEY_HEAD * key_dim
    qkv[start : start + key_dim] *= L2NORM_EPS_KEY_SCALE

    tensors[linear + "linear_attn.dt_bias"][SOFTPLUS_VALUE_HEAD] = SOFTPLUS_DT_BIAS
    tensors[linear + "linear_attn.A_log"][SOFTPLUS_VALUE_HEAD] = math.log(SOFTPLUS_A)

    for name in ("patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed.weight"):
        tensors["model.visual." + name] *= VISION_INPUT_SCALE


MOE_HIDDEN = 64
MOE_EXPERTS = 8
MOE_TOP_K = 4
MOE_INTERMEDIATE = 32
MOE_SHARED_INTERMEDIATE = 32


def moe_text_config() -> dict:
    """Qwen3.6-35B-A3B's text config (script/qwen3.6-35b-a3b.config.json) with reduced counts."""
    return {
        "model_type": "qwen3_5_moe_text",
        "attention_bias": False,
        "attn_output_gate": True,
        "eos_token_id": None,  # filled from the tokenizer
        "full_attention_interval": 4,
        "head_dim": 256,
        "hidden_act": "silu",
        "hidden_size": MOE_HIDDEN,
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 128,
        "linear_num_key_heads": 1,
        "linear_num_value_heads": 2,
        "linear_value_head_dim": 128,
        "mamba_ssm_dtype": "float32",
        "max_position_embeddings": 4096,
        "moe_intermediate_size": MOE_INTERMEDIATE,
        "num_attention_heads": 4,
        "num_experts": MOE_EXPERTS,
        "num_experts_per_tok": MOE_TOP_K,
        "num_hidden_layers": 4,
        "num_key_value_heads": 2,
        "output_router_logits": False,
        "rms_norm_eps": 1e-06,
        "rope_parameters": {
            "mrope_interleaved": True,
            "mrope_section": [11, 11, 10],
            "partial_rotary_factor": 0.25,
            "rope_theta": 10000000,
            "rope_type": "default",
        },
        "router_aux_loss_coef": 0.001,
        "shared_expert_intermediate_size": MOE_SHARED_INTERMEDIATE,
        "tie_word_embeddings": False,
        "vocab_size": VOCAB_SIZE,
    }


def per_expert_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The module's fused expert parameters (`mlp.experts.gate_up_proj` [E, 2I, H], `down_proj`
    [E, H, I]) as the per-expert tensors `save_pretrained` writes; every other name as it is."""
    out = {}
    for name, shape in shapes.items():
        if name.endswith("mlp.experts.gate_up_proj"):
            experts, two_i, hidden = shape
            prefix = name[: -len("gate_up_proj")]
            for e in range(experts):
                out[f"{prefix}{e}.gate_proj.weight"] = (two_i // 2, hidden)
                out[f"{prefix}{e}.up_proj.weight"] = (two_i // 2, hidden)
        elif name.endswith("mlp.experts.down_proj"):
            experts, hidden, inter = shape
            prefix = name[: -len("down_proj")]
            for e in range(experts):
                out[f"{prefix}{e}.down_proj.weight"] = (hidden, inter)
        else:
            out[name] = shape
    return out


def fused_experts(tensors: dict[str, torch.Tensor], tcfg: dict) -> dict[str, torch.Tensor]:
    """The per-expert tensors stacked into the fused layout: gate_up_proj [E, 2I, H] with each
    expert's gate rows first (transformers' `MergeModulelist` then `Concatenate(dim=1)`), and
    down_proj [E, H, I]."""
    experts = tcfg["num_experts"]
    out = {}
    for name, t in tensors.items():
        if ".mlp.experts." not in name:
            out[name] = t
            continue
        prefix = name[: name.index(".mlp.experts.") + len(".mlp.experts.")]
        if name == f"{prefix}0.gate_proj.weight":
            gate_up = [torch.cat([tensors[f"{prefix}{e}.gate_proj.weight"], tensors[f"{prefix}{e}.up_proj.weight"]]) for e in range(experts)]
            out[f"{prefix}gate_up_proj"] = torch.stack(gate_up).contiguous()
            out[f"{prefix}down_proj"] = torch.stack([tensors[f"{prefix}{e}.down_proj.weight"] for e in range(experts)]).contiguous()
    return out


def make_near_ties(tensors: dict[str, torch.Tensor], tcfg: dict) -> None:
    """Router row 2l + 1 of layer l becomes row 2l with entry l moved up by one bf16 ulp (the
    module docstring says why), in place."""
    experts = tcfg["num_experts"]
    for layer in range(tcfg["num_hidden_layers"]):
        gate = tensors[f"model.language_model.layers.{layer}.mlp.gate.weight"]
        a = (2 * layer) % experts
        gate[a + 1] = gate[a]
        bits = gate[a + 1].view(torch.int16)
        bits[layer] += 1  # one ulp further from zero (bf16 bit patterns are sign-magnitude)


def write_moe_model(out: Path, experts_layout: str) -> None:
    from transformers import Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration

    tok = build_tokenizer()
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    assert max(ids.values()) < VOCAB_SIZE, f"special token ids {ids} exceed vocab {VOCAB_SIZE}"

    tcfg = moe_text_config()
    tcfg["eos_token_id"] = ids["<|im_end|>"]
    vcfg = vision_config()
    # The dense model proves the vision tower; here it only has to feed the MoE layers, so it is
    # cut to one head of Qwen3.6's 72 dims and a 24 x 24 position table (fixtures/ has a 25 MB
    # budget, and the dense tower's merger and table would be 1.7 MB of this model).
    vcfg.update({"hidden_size": 72, "intermediate_size": 72, "num_heads": 1, "num_position_embeddings": 576})
    vcfg["out_hidden_size"] = tcfg["hidden_size"]
    config = {
        "architectures": ["Qwen3_5MoeForConditionalGeneration"],
        "model_type": "qwen3_5_moe",
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "tie_word_embeddings": False,
        "text_config": tcfg,
        "vision_config": vcfg,
    }

    hf_config = Qwen3_5MoeConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    with torch.device("meta"):
        skeleton = Qwen3_5MoeForConditionalGeneration(hf_config)
    shapes = per_expert_shapes({name: tuple(p.shape) for name, p in skeleton.state_dict().items()})

    gen = torch.Generator().manual_seed(SEED)
    tensors = {}
    for name in sorted(shapes):
        tensors[name] = init_tensor(name, shapes[name], gen).to(torch.bfloat16).contiguous()
    make_near_ties(tensors, tcfg)
    if experts_layout == "fused":
        tensors = fused_experts(tensors, tcfg)

    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(), indent=2) + "\n")
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    tok.save(str(out / "tokenizer.json"))
    write_tokenizer_config(out, model_max_length=4096)

    n_params = sum(t.numel() for t in tensors.values())
    size = (out / "model.safetensors").stat().st_size
    print(f"wrote {out}: {n_params} parameters, model.safetensors {size} bytes ({experts_layout} experts)", file=sys.stderr)


def write_tokenizer_config(out: Path, model_max_length: int) -> None:
    """tokenizer_config.json for the byte-level BPE with Qwen's special tokens."""
    tokenizer_config = {
        "tokenizer_class": "TokenizersBackend",
        "model_max_length": model_max_length,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "bos_token": None,
        "add_prefix_space": False,
        "errors": "replace",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")


def write_model(out: Path) -> None:
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    tok = build_tokenizer()
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    assert max(ids.values()) < VOCAB_SIZE, f"special token ids {ids} exceed vocab {VOCAB_SIZE}"

    tcfg = text_config()
    tcfg["eos_token_id"] = ids["<|im_end|>"]
    config = {
        "architectures": ["Qwen3_5ForConditionalGeneration"],
        "model_type": "qwen3_5",
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "tie_word_embeddings": False,
        "text_config": tcfg,
        "vision_config": vision_config(),
    }

    # The parameter names and shapes come from transformers itself, so the checkpoint
    # loads with no missing or unexpected keys.
    hf_config = Qwen3_5Config(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    with torch.device("meta"):
        skeleton = Qwen3_5ForConditionalGeneration(hf_config)
    shapes = {name: tuple(p.shape) for name, p in skeleton.state_dict().items()}

    gen = torch.Generator().manual_seed(SEED)
    tensors = {}
    for name in sorted(shapes):
        tensors[name] = init_tensor(name, shapes[name], gen).to(torch.bfloat16).contiguous()
    expose_constants(tensors, tcfg)

    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(), indent=2) + "\n")
    (out / "video_preprocessor_config.json").write_text(json.dumps(video_preprocessor_config(), indent=2) + "\n")
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    tok.save(str(out / "tokenizer.json"))
    write_tokenizer_config(out, model_max_length=4096)

    n_params = sum(t.numel() for t in tensors.values())
    size = (out / "model.safetensors").stat().st_size
    print(f"wrote {out}: {n_params} parameters, model.safetensors {size} bytes", file=sys.stderr)


def write_atomically(out: Path, write: Callable[[Path], None]) -> None:
    """Runs `write` on a temporary folder next to `out` and swaps it in whole, so a failed
    run loses nothing (the old folder survives until the new one is complete)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        write(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the checkpoint is ordinary data
        for f in tmp.iterdir():
            f.chmod(0o644)
        old = out.with_name(out.name + ".old")
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to (re)write the checkpoint into")
    parser.add_argument(
        "--kind",
        choices=["dense", "moe"],
        default="dense",
        help="the dense iteration model (Qwen3.6-27B's geometry, the default) or the MoE one (Qwen3.6-35B-A3B's)",
    )
    parser.add_argument(
        "--experts-layout",
        choices=["per-expert", "fused"],
        default="per-expert",
        help="with --kind moe: the routed experts per expert (as save_pretrained writes them, the default) or fused",
    )
    args = parser.parse_args()
    torch.manual_seed(SEED)
    if args.kind == "moe":
        write_atomically(args.out, lambda out: write_moe_model(out, args.experts_layout))
    else:
        if args.experts_layout != "per-expert":
            parser.error("--experts-layout applies to --kind moe only")
        write_atomically(args.out, write_model)


if __name__ == "__main__":
    main()
