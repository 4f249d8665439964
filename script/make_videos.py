"""Writes the video clips of fixtures/videos/ from synthetic frames.

PyAV is pinned in uv.lock (the reference's video decoder: transformers 5.23's default backend,
torchcodec, is not installed, so capture.py decodes with PyAV):

    cd script && uv run --locked python make_videos.py

The frames are computed, x264 runs single-threaded with fixed settings, and the muxers are
asked for bit-exact output (no creation time, no library version string). With the pinned
PyAV wheel (which bundles its FFmpeg and x264) every file but two comes out the same bytes run
after run: the High-profile clip with B-frames (`gradient-64x48-high.mp4`, and
`truncated-64x48.mp4` made from it) did not, on 2026-12-08, in two runs on one machine
(19 098 and 19 168 bytes; the decoded frames differ too). Keep the committed files: their
digests are in fixtures.toml and tests/video.rs pins their decoded frames; a new file needs
both taken again.

What each file is for (crates/neuron/tests/video.rs reads them):

- `gradient-64x48-high.mp4`: H.264 High profile as x264 writes it by default (CABAC, 8×8
  transform, B-frames with a reordered output), 24 fps, 50 frames (2.083 s).
- `counter-96x64-baseline.mp4`: H.264 Constrained Baseline (CAVLC, no B-frames), 10 fps, 36
  frames; every frame shows its index as a bar pattern.
- `ntsc-160x120-main.mp4`: H.264 Main profile at 30000/1001 fps, 45 frames: an fps that is no
  integer, for the sampling and timestamp arithmetic.
- `one-frame-64x48.mp4`: a single H.264 frame (the processor refuses one frame).
- `truncated-64x48.mp4`: `gradient-64x48-high.mp4` written with its index first
  (`+faststart`), cut to its first half: the index names samples past the end of the file.
- `mpeg4-part2-64x48.mp4`: MPEG-4 Part 2 video (`mp4v`) in MP4: a codec that is refused.
- `vp9-64x48.webm`: VP9 in WebM (Matroska): a container that is refused.
- `frames-64x48/`: six PNG frames `frame-000.png` … `frame-005.png` (the folder loader).
"""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parent.parent / "fixtures" / "videos"


def frame(i: int, h: int, w: int) -> np.ndarray:
    """A frame that changes with i everywhere: two gradients, a moving square, a tint."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[..., 0] = (x * 255 // max(w - 1, 1) + 3 * i) % 256
    rgb[..., 1] = (y * 255 // max(h - 1, 1) + 5 * i) % 256
    rgb[..., 2] = (((x + y + 4 * i) // 8) % 2) * 160 + 40
    side = max(h // 4, 4)
    top, left = (2 * i) % (h - side), (3 * i) % (w - side)
    rgb[top : top + side, left : left + side] = (250, 245, 20)
    return rgb


def counter_frame(i: int, h: int, w: int) -> np.ndarray:
    """The frame index as eight vertical bars (bit 7 at the left): white for 1, dark for 0."""
    rgb = frame(i, h, w) // 4
    bar = w // 8
    for bit in range(8):
        if (i >> (7 - bit)) & 1:
            rgb[h // 4 : 3 * h // 4, bit * bar : (bit + 1) * bar] = 235
    return rgb


def write(path: Path, frames, rate: Fraction, codec: str, options: dict, faststart: bool = False) -> None:
    muxer = {"fflags": "+bitexact"}
    if faststart:
        muxer["movflags"] = "+faststart"
    container = av.open(str(path), "w", options=muxer)
    stream = container.add_stream(codec, rate=rate)
    first = frames[0]
    stream.height, stream.width = first.shape[:2]
    stream.pix_fmt = "yuv420p"
    stream.codec_context.flags |= av.codec.context.Flags.bitexact
    stream.thread_count = 1
    stream.options = options
    for rgb in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def main() -> None:
    OUT.mkdir(exist_ok=True)
    def x264(profile: str) -> dict:
        return {"crf": "18", "preset": "medium", "profile": profile, "x264-params": "threads=1:lookahead-threads=1"}

    gradient = [frame(i, 48, 64) for i in range(50)]
    write(OUT / "gradient-64x48-high.mp4", gradient, Fraction(24), "libx264", x264("high"))
    counter = [counter_frame(i, 64, 96) for i in range(36)]
    write(OUT / "counter-96x64-baseline.mp4", counter, Fraction(10), "libx264", x264("baseline"))
    ntsc = [frame(i, 120, 160) for i in range(45)]
    write(OUT / "ntsc-160x120-main.mp4", ntsc, Fraction(30000, 1001), "libx264", x264("main"))
    write(OUT / "one-frame-64x48.mp4", [frame(0, 48, 64)], Fraction(24), "libx264", x264("high"))
    # The sample table first (faststart), then half of the media data: the index promises
    # samples that the file no longer holds.
    cut = OUT / "truncated-64x48.mp4"
    write(cut, gradient, Fraction(24), "libx264", x264("high"), faststart=True)
    whole = cut.read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])
    write(OUT / "mpeg4-part2-64x48.mp4", [frame(i, 48, 64) for i in range(8)], Fraction(24), "mpeg4", {"qscale": "4"})
    write(OUT / "vp9-64x48.webm", [frame(i, 48, 64) for i in range(8)], Fraction(24), "libvpx-vp9", {"crf": "40", "b": "0"})
    folder = OUT / "frames-64x48"
    folder.mkdir(exist_ok=True)
    for i in range(6):
        Image.fromarray(frame(i, 48, 64)).save(folder / f"frame-{i:03}.png", optimize=False, compress_level=9)
    for path in sorted(OUT.rglob("*")):
        if path.is_file():
            print(f"{path.relative_to(OUT)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
