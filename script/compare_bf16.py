"""Per-tap deviations of a bf16 run: the reference's own noise (its bf16 run vs its f32 run) and Rust's.

    script/.venv/bin/python script/compare_bf16.py --ref /tmp/bf16-ref/chelsea --rust /tmp/bf16-rust/chelsea

`--ref` holds the reference's bf16 taps and, in `f32/`, its f32 taps of the same inputs
(`script/probe_bf16.py`); `--rust` holds Rust's bf16 taps (`cargo run --example dtype_taps`).
Per tap: max |Δ|, RMS(Δ) and cosine of reference bf16 vs reference f32 ("noise") and of Rust bf16
vs reference bf16, and the ratios Rust / noise of the max and the RMS. A tap passes at `--k`
when both ratios are at most k (the proposed tolerance scheme for bf16 cases); logits must also
keep the argmax and the top-5 set, except across a near tie of the reference (its k-th and
(k+1)-th logits within twice its noise max). Integer taps are compared exactly.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from capture import pipeline_rank  # noqa: E402


def metrics(a: np.ndarray, b: np.ndarray) -> dict:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    d = a - b
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return {
        "max": float(np.abs(d).max()) if d.size else 0.0,
        "rms": float(np.sqrt(np.mean(d * d))) if d.size else 0.0,
        "cos": float(a @ b / denom) if denom > 0 else 1.0,
    }


def top(x: np.ndarray, k: int) -> list[int]:
    return [int(i) for i in np.argsort(-x.astype(np.float64), kind="stable")[:k]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", type=Path, required=True)
    parser.add_argument("--rust", type=Path, required=True)
    parser.add_argument("--k", type=float, default=2.0)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = []
    names = sorted((p.stem for p in args.ref.glob("*.npy")), key=pipeline_rank)
    print(f"{'tap':<22} {'noise max':>10} {'noise rms':>10} {'noise cos':>11} "
          f"{'rust max':>10} {'rust rms':>10} {'rust cos':>11} {'×max':>6} {'×rms':>6}  verdict")
    for name in names:
        rust_path = args.rust / f"{name}.npy"
        if not rust_path.is_file():
            continue
        ref = np.load(args.ref / f"{name}.npy")
        f32 = np.load(args.ref / "f32" / f"{name}.npy")
        rust = np.load(rust_path)
        if ref.shape != rust.shape:
            print(f"{name:<22} shape {list(rust.shape)} vs reference {list(ref.shape)}")
            rows.append({"tap": name, "verdict": "shape"})
            continue
        if ref.dtype == np.int64:
            same = bool((ref == rust).all())
            noise_same = bool(ref.shape == f32.shape and (ref == f32).all())
            verdict = "exact" if same else f"DIFFERS at {int(np.argmax(ref.ravel() != rust.ravel()))}"
            extra = "" if noise_same else "  (reference bf16 differs from its f32 run)"
            print(f"{name:<22} {verdict}{extra}")
            rows.append({"tap": name, "verdict": verdict, "ref_bf16_vs_f32_equal": noise_same})
            continue
        noise, dev = metrics(ref, f32), metrics(rust, ref)
        rmax = dev["max"] / noise["max"] if noise["max"] > 0 else (0.0 if dev["max"] == 0 else float("inf"))
        rrms = dev["rms"] / noise["rms"] if noise["rms"] > 0 else (0.0 if dev["rms"] == 0 else float("inf"))
        verdict = "pass" if rmax <= args.k and rrms <= args.k else "FAIL"
        notes = []
        if name in ("lm.logits_last", "gen.logits"):
            # The argmax and the top-5 set must agree, except across a near tie of the reference:
            # its k-th and (k+1)-th logits within twice the reference's own noise (max |Δ| of its
            # bf16 run vs its f32 run; each of the two may move by that much, in opposite
            # directions), which rounding may order either way (the reference's f32 run then
            # often orders them differently too). The `generate` verdict's near tie is the same
            # rule with twice the tolerance.
            for i, (r, x, f) in enumerate(zip(np.atleast_2d(ref), np.atleast_2d(rust), np.atleast_2d(f32))):
                for k in (1, 5):
                    if set(top(r, k)) == set(top(x, k)):
                        continue
                    order = top(r, k + 1)
                    margin = float(r[order[k - 1]] - r[order[k]])
                    tie = margin <= 2 * noise["max"]
                    f32_agrees = set(top(f, k)) == set(top(r, k))
                    notes.append(f"step {i}: top-{k} {sorted(top(x, k))} vs reference {sorted(top(r, k))}, reference "
                                 f"margin {margin:.3g} {'≤' if tie else '>'} 2 × noise max"
                                 f"{'' if f32_agrees else ', reference f32 run also differs'}")
                    if not tie:
                        verdict = "FAIL"
        print(f"{name:<22} {noise['max']:10.3e} {noise['rms']:10.3e} {noise['cos']:11.8f} "
              f"{dev['max']:10.3e} {dev['rms']:10.3e} {dev['cos']:11.8f} {rmax:6.2f} {rrms:6.2f}  {verdict}"
              + ("  " + "; ".join(notes) if notes else ""))
        rows.append({"tap": name, "noise": noise, "rust": dev, "ratio_max": rmax, "ratio_rms": rrms,
                     "verdict": verdict, "notes": notes})
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
