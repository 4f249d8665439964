"""Times the transformers side of the Rust-versus-transformers benchmark.

The Rust port is only worth its keep if it is not much slower than the reference on the
same CPU, so the reference is timed here stage by stage, on the same inputs the Rust side
runs: the model resident in float32 with eager attention (the reference configuration of
capture.py), the inputs prepared once exactly as capture.py prepares them (chat template,
the image first, then the prompt, in one user message). Each stage runs once to warm up,
then `--runs` times under `torch.no_grad()`:

* `vision`: the vision tower and projector, `model.model.visual(pixel_values, grid_thw=...)`;
* `prefill`: the text model over the prompt's input embeddings with the image rows spliced
  in, at the multimodal positions, then `lm_head` on the last position only (the embeddings
  and positions are computed once, outside the timing, with the model's own functions);
* `forward`: the whole model, `model(**inputs, use_cache=False, logits_to_keep=1)`;
* `decode`: cached greedy decoding as `generate` runs it: the prompt prefilled into a cache
  (untimed), then `--decode-steps` single-token steps, each `model(input_ids=[[token]],
  past_key_values=cache, logits_to_keep=1)` with the previous step's argmax; every step is one
  sample, so the median is the time per generated token.

`--batch 1,4,8` adds batched greedy decoding (`batches` in the JSON): per batch size B, the user
texts of `batch_prompts` (row r the first ceil(W * (B - r) / B) of the prompt's W words, so the
rows differ in length; a batch of one is the prompt alone, unpadded, since transformers PR
#46773 leaves a padded batch of one unmasked) through the chat template, left-padded by the
processor (`padding_side="left"`), then `generate(do_sample=False, eos_token_id=None)` for
`--decode-steps` + 1 tokens. A logits processor notes when each step's logits arrive; a round's
decode time runs from the prefill's logits to the last step's (`--decode-steps` forwards with
generate's own work between them), the prefill excluded, and gives B * steps / time tokens per
second. One warm-up round, then `--runs`. The Rust side (examples/bench.rs) cuts the same rows
and times the same span.

A checkpoint of the MoE family (`model_type` `qwen3_5_moe`, the MoE stand-in of `cargo xtask bench
--standin moe`) is loaded as `Qwen3_5MoeForConditionalGeneration` with `experts_implementation=
"grouped_mm"` (what `from_pretrained` picks by default, and what capture.py pins); every stage is
the same call.

`--prompt-tokens N` builds the user text deterministically instead of `--prompt`: the longest
run of make_model.CORPUS's words that the checkpoint's tokenizer encodes to exactly N tokens.
The samples, medians, input sizes, load time and peak resident memory go to `--out` (JSON)
and a short table to stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from PIL import Image
from transformers import (
    AutoConfig,
    AutoProcessor,
    LogitsProcessor,
    LogitsProcessorList,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeForConditionalGeneration,
)

import make_model
from capture import build_messages


def prompt_of_tokens(tokenizer, n_tokens: int) -> str:
    """The longest prefix of make_model.CORPUS, in whole words, that encodes to exactly n_tokens."""
    words = make_model.CORPUS.split()
    for count in range(len(words), 0, -1):
        text = " ".join(words[:count])
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) == n_tokens:
            return text
    sys.exit(f"error: no prefix of the corpus encodes to exactly {n_tokens} tokens")


def prefill_inputs(model: Qwen3_5ForConditionalGeneration, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The text model's inputs as `Qwen3_5Model.forward` computes them: spliced embeddings and M-RoPE positions."""
    inner = model.model
    input_ids = inputs["input_ids"]
    embeds = inner.get_input_embeddings()(input_ids)
    image_embeds = inner.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).pooler_output
    image_mask, _ = inner.get_placeholder_mask(input_ids, inputs_embeds=embeds, image_features=image_embeds)
    embeds = embeds.masked_scatter(image_mask, image_embeds.to(embeds.dtype))
    position_ids, _ = inner.get_rope_index(
        input_ids,
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    return embeds, position_ids


def time_stage(run: Callable[[], torch.Tensor], runs: int) -> tuple[list[float], torch.Tensor]:
    """One warm-up call, then `runs` timed calls; returns the samples (seconds) and the warm-up's result."""
    result = run()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return samples, result


def decode_samples(model: Qwen3_5ForConditionalGeneration, inputs, steps: int, runs: int) -> tuple[list[float], list[int]]:
    """Seconds per cached decode step (`runs` rounds of `steps`, after one warm-up round) and the greedy tokens."""
    samples, tokens = [], []
    for round_ in range(runs + 1):
        out = model(**inputs, use_cache=True, logits_to_keep=1)
        cache, token = out.past_key_values, out.logits[0, -1].argmax()
        tokens = []
        for _ in range(steps):
            started = time.perf_counter()
            out = model(input_ids=token.view(1, 1), past_key_values=cache, use_cache=True, logits_to_keep=1)
            elapsed = time.perf_counter() - started
            token = out.logits[0, -1].argmax()
            tokens.append(int(token))
            if round_ > 0:
                samples.append(elapsed)
    return samples, tokens


def batch_prompts(prompt: str, rows: int) -> list[str]:
    """The user texts of a batch of `rows`: row r keeps the first ceil(W * (rows - r) / rows) of the
    prompt's W words (examples/bench.rs cuts them the same way)."""
    words = prompt.split()
    return [" ".join(words[: -(-len(words) * (rows - r) // rows)]) for r in range(rows)]


class StepClock(LogitsProcessor):
    """Notes the time at each call: `generate` calls its logits processors once per generated
    token, as soon as that step's logits are in hand (the first call after the prefill)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.times.append(time.perf_counter())
        return scores


def batched_decode(model, processor, prompt: str, rows: int, steps: int, runs: int) -> dict:
    """Tokens per second of `generate` decoding a left-padded batch of `rows` for `steps` steps
    after its prefill (see the module's docstring), per round after one warm-up, and the tokens."""
    texts = [
        processor.apply_chat_template(build_messages(0, text), tokenize=False, add_generation_prompt=True)
        for text in batch_prompts(prompt, rows)
    ]
    processor.tokenizer.padding_side = "left"
    inputs = processor(text=texts, return_tensors="pt", padding=True)
    mask = inputs["attention_mask"]
    if rows == 1 and not bool(mask.all()):
        sys.exit("error: a batch of one must be unpadded (transformers PR #46773: its padding is not masked)")
    seconds, tokens = [], []
    for round_ in range(runs + 1):
        clock = StepClock()
        out = model.generate(
            **inputs,
            do_sample=False,
            max_new_tokens=steps + 1,
            eos_token_id=None,
            pad_token_id=processor.tokenizer.pad_token_id,
            logits_processor=LogitsProcessorList([clock]),
        )
        if len(clock.times) != steps + 1:
            sys.exit(f"error: generate produced {len(clock.times)} tokens, not {steps + 1}")
        tokens = out[:, inputs["input_ids"].shape[1] :].tolist()
        if round_ > 0:
            seconds.append(clock.times[-1] - clock.times[0])
    throughput = [rows * steps / s for s in seconds]
    return {
        "rows": rows,
        "row_tokens": [int(n) for n in mask.sum(-1)],
        "decode_steps": steps,
        "decode_seconds": seconds,
        "tokens_per_second": {"samples": throughput, "median": statistics.median(throughput)},
        "tokens": tokens,
    }


def bench(args: argparse.Namespace) -> dict:
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    processor = AutoProcessor.from_pretrained(args.model_dir)
    prompt = args.prompt if args.prompt is not None else prompt_of_tokens(processor.tokenizer, args.prompt_tokens)
    print(f"prompt: {prompt!r}", file=sys.stderr)

    started = time.perf_counter()
    moe = AutoConfig.from_pretrained(args.model_dir).model_type == "qwen3_5_moe"
    model_class = Qwen3_5MoeForConditionalGeneration if moe else Qwen3_5ForConditionalGeneration
    model = model_class.from_pretrained(
        args.model_dir,
        dtype={"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype],
        attn_implementation="eager",
        **({"experts_implementation": "grouped_mm"} if moe else {}),
    )
    model.eval()
    load_seconds = time.perf_counter() - started

    image = Image.open(args.image)
    text = processor.apply_chat_template(build_messages(1, prompt), tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    lm = model.model.language_model

    with torch.no_grad():
        # The first forward pass, before anything else touches the weights: from_pretrained
        # maps a bf16 checkpoint and reads its pages here, so load + this is the time to a
        # first answer on either side.
        started = time.perf_counter()
        model(**inputs, use_cache=False, logits_to_keep=1)
        first_forward_seconds = time.perf_counter() - started
        embeds, position_ids = prefill_inputs(model, inputs)
        stages = {
            "vision": lambda: model.model.visual(
                inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]
            ).pooler_output,
            "prefill": lambda: model.lm_head(
                lm(inputs_embeds=embeds, position_ids=position_ids, use_cache=False).last_hidden_state[:, -1:]
            ),
            "forward": lambda: model(**inputs, use_cache=False, logits_to_keep=1).logits,
        }
        timings, results = {}, {}
        for name, run in stages.items():
            samples, results[name] = time_stage(run, args.runs)
            timings[name] = {"samples_seconds": samples, "median_seconds": statistics.median(samples)}
        decode_tokens = []
        if args.decode_steps > 0:
            samples, decode_tokens = decode_samples(model, inputs, args.decode_steps, args.runs)
            timings["decode"] = {"samples_seconds": samples, "median_seconds": statistics.median(samples)}
        batches = [
            batched_decode(model, processor, prompt, rows, args.decode_steps, args.runs) for rows in args.batch or []
        ]

    # The prefill stage must be the forward pass minus the vision tower, not something cheaper.
    prefill_vs_forward = float((results["prefill"] - results["forward"]).abs().max())
    if prefill_vs_forward > 1e-3:
        sys.exit(f"error: prefill logits differ from the forward pass's by {prefill_vs_forward}")

    input_ids = inputs["input_ids"][0]
    extra = {"batches": batches} if args.batch else {}
    return {
        "model_dir": str(args.model_dir),
        "image": str(args.image),
        "prompt": prompt,
        "user_text_tokens": len(processor.tokenizer(prompt, add_special_tokens=False)["input_ids"]),
        "prompt_tokens": int(input_ids.numel()),
        "image_tokens": int((input_ids == model.config.image_token_id).sum()),
        "patches": int(inputs["pixel_values"].shape[0]),
        "image_grid_thw": inputs["image_grid_thw"][0].tolist(),
        "threads": args.threads,
        "runs": args.runs,
        "load_seconds": load_seconds,
        "first_forward_seconds": first_forward_seconds,
        "stages": timings,
        "decode_steps": args.decode_steps,
        "decode_tokens": decode_tokens,
        "prefill_vs_forward_max_abs_diff": prefill_vs_forward,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        **extra,
    }


def batch_sizes(text: str) -> list[int]:
    """`--batch 1,4,8` as a list of positive sizes."""
    sizes = [int(size) for size in text.split(",")]
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"batch sizes must be positive: {text}")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, type=Path, help="checkpoint folder (e.g. the stand-in)")
    parser.add_argument("--image", required=True, type=Path, help="the image (PNG)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--prompt", help="the user text")
    which.add_argument("--prompt-tokens", type=int, help="build a user text of exactly this many tokens")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per stage (after one warm-up)")
    parser.add_argument("--decode-steps", type=int, default=8, help="cached decode steps per round (0: none)")
    parser.add_argument("--out", required=True, type=Path, help="JSON file for the results")
    parser.add_argument("--dtype", choices=["f32", "bf16"], default="f32", help="from_pretrained(dtype=...)")
    parser.add_argument(
        "--batch",
        type=batch_sizes,
        help="batch sizes for batched greedy decoding, comma-separated (1,4,8); none: no batched stage",
    )
    args = parser.parse_args()
    if args.batch and args.decode_steps < 1:
        parser.error("--batch times decode steps: give --decode-steps 1 or more")

    report = bench(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"{report['prompt_tokens']} prompt tokens ({report['image_tokens']} image, {report['user_text_tokens']} user "
        f"text), {report['patches']} patches, {report['threads']} threads, load {report['load_seconds']:.2f} s, "
        f"peak RSS {report['peak_rss_bytes'] / 1e9:.2f} GB"
    )
    print(f"{'stage':<8} {'median s':>10}  samples s")
    for name, t in report["stages"].items():
        samples = " ".join(f"{s:.3f}" for s in t["samples_seconds"])
        print(f"{name:<8} {t['median_seconds']:>10.3f}  {samples}")
    for batch in report.get("batches", []):
        samples = " ".join(f"{s:.2f}" for s in batch["tokens_per_second"]["samples"])
        print(f"batch {batch['rows']:<2} {batch['tokens_per_second']['median']:>8.2f} tokens/s  {samples}")


if __name__ == "__main__":
    main()
