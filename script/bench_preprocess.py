"""Preprocessing speed, Rust against the reference image and video processors, in one run.

    cargo build --release --example preprocess_bench
    cd script && uv run --locked python bench_preprocess.py [--runs 7]

Writes a 1920×1280 photograph (astronaut.png scaled up with Lanczos) as PNG and JPEG to a
temporary folder, adds the known images, then times per file: Rust's
`examples/preprocess_bench.rs` (decode, RGB, resize, normalise, patchify) and
`Qwen2VLImageProcessor` (torchvision backend) on `Image.open(path)`, each the median of
`--runs` runs after one warm-up, torch on one thread as Rust runs on one core. Prints a
table: milliseconds per file and per megapixel of input.

Then videos: a 10 s 1280×720 H.264 (High profile, 30 fps) clip written to the temporary folder
with PyAV, and the known clips. Per clip, Rust's decoding and `Qwen3VLVideoProcessor` port
against the reference as the harness runs it: `load_video(backend="pyav")` decoding up to the
last frame the processor samples (converting only those, as `read_video_pyav` does) and the
video processor on them (torchvision backend). Both sides use the iteration model's video
configuration (2 frames per second, a small pixel budget). Prints milliseconds per clip and
per second of video.
"""

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from fractions import Fraction

import av
import numpy as np
import torch
from PIL import Image
from transformers import AutoProcessor
from transformers.video_utils import load_video

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "fixtures" / "models" / "tiny-qwen3.6-27b"



def median_ms(run, runs: int) -> float:
    """Median wall time of `run()` in ms over `runs` timed calls, after one untimed warm-up."""
    times = []
    for i in range(runs + 1):
        start = time.perf_counter()
        run()
        if i:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)

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
        ref = median_ms(lambda: processor(images=[Image.open(path)], return_tensors="pt"), args.runs)
        r = rust[str(path)]
        mp = r["megapixels"]
        totals[0] += mp
        totals[1] += r["ms"]
        totals[2] += ref
        print(f"| {path.name} | {mp:.3f} | {r['ms']:.2f} | {ref:.2f} | {r['ms'] / mp:.1f} | {ref / mp:.1f} | {ref / r['ms']:.2f}× |")
    mp, rs, ref = totals
    print(f"| all | {mp:.3f} | {rs:.2f} | {ref:.2f} | {rs / mp:.1f} | {ref / mp:.1f} | {ref / rs:.2f}× |")
    print()
    bench_videos(tmp, rust_bin, args.runs)


def write_clip(path: Path, width: int, height: int, seconds: int, fps: int) -> None:
    """A moving gradient with a sweeping bar, H.264 High (x264 defaults, one thread)."""
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=Fraction(fps))
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.options = {"crf": "23", "preset": "medium", "x264-params": "threads=1:lookahead-threads=1"}
    y, x = np.mgrid[0:height, 0:width]
    for i in range(seconds * fps):
        rgb = np.empty((height, width, 3), np.uint8)
        rgb[..., 0] = (x * 255 // (width - 1) + 3 * i) % 256
        rgb[..., 1] = (y * 255 // (height - 1) + 5 * i) % 256
        rgb[..., 2] = ((x // 40 + i) % 2) * 200
        rgb[:, (7 * i) % width : (7 * i) % width + 40] = 240
        for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def bench_videos(tmp: Path, rust_bin: Path, runs: int) -> None:
    clips = [tmp / "clip-1280x720-10s.mp4"] + [
        ROOT / "fixtures/videos" / n
        for n in ("counter-96x64-baseline.mp4", "ntsc-160x120-main.mp4", "gradient-64x48-high.mp4")
    ]
    write_clip(clips[0], 1280, 720, 10, 30)
    out = subprocess.run(
        [str(rust_bin), str(MODEL), str(runs), *map(str, clips)], check=True, capture_output=True, text=True
    ).stdout
    rust = {json.loads(line)["video"]: json.loads(line) for line in out.splitlines()}
    video_processor = AutoProcessor.from_pretrained(MODEL).video_processor
    print("| video | seconds | frames sampled | Rust ms | reference ms | Rust ms/s | reference ms/s | reference / Rust |")
    print("|---|---|---|---|---|---|---|---|")
    totals = [0.0, 0.0, 0.0]
    for path in clips:

        def reference() -> None:
            frames, metadata = load_video(str(path), backend="pyav", sample_indices_fn=video_processor.sample_frames)
            video_processor(videos=[frames], video_metadata=[metadata], do_sample_frames=False, return_tensors="pt")

        ref = median_ms(reference, runs)
        r = rust[str(path)]
        s = r["seconds"]
        totals[0] += s
        totals[1] += r["ms"]
        totals[2] += ref
        print(
            f"| {path.name} | {s:.2f} | {r['frames']} | {r['ms']:.2f} | {ref:.2f} | {r['ms'] / s:.1f} | {ref / s:.1f} "
            f"| {ref / r['ms']:.2f}× |"
        )
    s, rs, ref = totals
    print(f"| all | {s:.2f} | | {rs:.2f} | {ref:.2f} | {rs / s:.1f} | {ref / s:.1f} | {ref / rs:.2f}× |")


if __name__ == "__main__":
    main()
