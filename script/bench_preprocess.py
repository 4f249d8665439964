"""Preprocessing speed, Rust against the reference image processor, in one run.

    cargo build --release --example preprocess_bench
    cd script && uv run --locked python bench_preprocess.py [--runs 7]

Writes a 1920×1280 photograph (astronaut.png scaled up with Lanczos) as PNG and JPEG to a
temporary folder, adds the known images, then times per file: Rust's
`examples/preprocess_bench.rs` (decode, RGB, resize, normalise, patchify) and
`Qwen2VLImageProcessor` (torchvision backend) on `Image.open(path)`, each the median of
`--runs` runs after one warm-up, torch on one thread as Rust runs on one core. Prints a
table: milliseconds per file and per megapixel of input.
"""

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "fixtures" / "models" / "tiny-qwen3.6-27b"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="neuron-bench-preprocess-"))
    big = Image.open(ROOT / "fixtures/images/astronaut.png").convert("RGB").resize((1920, 1280), Image.LANCZOS)
    big.save(tmp / "photo-1920x1280.png")
    big.save(tmp / "photo-1920x1280.jpg", quality=90)
    images = [tmp / "photo-1920x1280.png", tmp / "photo-1920x1280.jpg"] + [
        ROOT / "fixtures/images" / n for n in ("rocket.jpg", "chelsea.png", "logo.png")
    ]
    rust_bin = ROOT / "target/release/examples/preprocess_bench"
    out = subprocess.run(
        [str(rust_bin), str(MODEL), str(args.runs), *map(str, images)], check=True, capture_output=True, text=True
    ).stdout
    rust = {json.loads(line)["image"]: json.loads(line) for line in out.splitlines()}
    processor = AutoProcessor.from_pretrained(MODEL).image_processor
    print(f"| image | megapixels | Rust ms | reference ms | Rust ms/MP | reference ms/MP | reference / Rust |")
    print("|---|---|---|---|---|---|---|")
    totals = [0.0, 0.0, 0.0]
    for path in images:
        times = []
        for run in range(args.runs + 1):
            start = time.perf_counter()
            processor(images=[Image.open(path)], return_tensors="pt")
            if run:
                times.append((time.perf_counter() - start) * 1e3)
        ref = statistics.median(times)
        r = rust[str(path)]
        mp = r["megapixels"]
        totals[0] += mp
        totals[1] += r["ms"]
        totals[2] += ref
        print(f"| {path.name} | {mp:.3f} | {r['ms']:.2f} | {ref:.2f} | {r['ms'] / mp:.1f} | {ref / mp:.1f} | {ref / r['ms']:.2f}× |")
    mp, rs, ref = totals
    print(f"| all | {mp:.3f} | {rs:.2f} | {ref:.2f} | {rs / mp:.1f} | {ref / mp:.1f} | {ref / rs:.2f}× |")


if __name__ == "__main__":
    main()
