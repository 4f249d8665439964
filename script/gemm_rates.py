"""torch's f32 matmul rate at each shape of the bench's GEMMs (the transformers side of `cargo xtask bench`).

The shapes (a JSON list of {batch, m, k, n}) are written by the xtask from the model's weights;
each is timed as `crates/neuron/examples/gemm_rates.rs` times candle: the right operand stored
n × k and transposed (as `nn.Linear` holds its weight), one warm-up, the best of five, with
`--threads` torch threads. The list goes back to `--out` with `seconds` and `gflops`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def best_of_five(batch: int, m: int, k: int, n: int, dtype: torch.dtype) -> float:
    """Seconds of the fastest of five products after one warm-up."""
    if batch > 1:
        x, w = torch.randn(batch, m, k, dtype=dtype), torch.randn(batch, n, k, dtype=dtype)
    else:
        x, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
    with torch.no_grad():
        torch.matmul(x, w.transpose(-1, -2))
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            torch.matmul(x, w.transpose(-1, -2))
            best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", required=True, type=Path, help="JSON list of {batch, m, k, n}")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", required=True, type=Path, help="JSON file for the rates")
    parser.add_argument("--dtype", choices=["f32", "bf16"], default="f32", help="operand dtype")
    args = parser.parse_args()
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.set_num_threads(args.threads)
    rates = []
    for shape in json.loads(args.shapes.read_text()):
        batch, m, k, n = (int(shape[key]) for key in ("batch", "m", "k", "n"))
        seconds = best_of_five(batch, m, k, n, dtype)
        gflops = 2 * batch * m * k * n / seconds / 1e9
        print(f"torch {batch} × {m}×{k} · {k}×{n}: {gflops:.1f} GFLOP/s", file=sys.stderr)
        rates.append({"batch": batch, "m": m, "k": k, "n": n, "seconds": seconds, "gflops": gflops})
    args.out.write_text(json.dumps({"threads": torch.get_num_threads(), "rates": rates}, indent=2) + "\n")


if __name__ == "__main__":
    main()
