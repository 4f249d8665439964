"""Compares Rust's decoding (crates/neuron/examples/read_images.rs) with PIL's, byte for byte.

    cargo run --release --example read_images -- /tmp/rust-rgb fixtures/images/formats/*
    script/.venv/bin/python script/check_image_files.py /tmp/rust-rgb fixtures/images/formats/*

For each image and loader it prints the share of bytes that differ and the largest
difference, or the error either side gave. The reference RGB is what the image processor
turns into a tensor: `convert_to_rgb(Image.open(path))` for the processor loader,
`convert_to_rgb(load_image(path))` for load_image.
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from transformers.image_transforms import convert_to_rgb
from transformers.image_utils import load_image


def reference(path: Path, loader: str) -> np.ndarray:
    image = Image.open(path) if loader == "processor" else load_image(str(path))
    return convert_to_rgb(image, return_numpy=True)


def main() -> None:
    rust_dir = Path(sys.argv[1])
    bad = 0
    for name in sys.argv[2:]:
        path = Path(name)
        for loader in ("processor", "load_image"):
            try:
                ref = reference(path, loader)
            except Exception as e:  # noqa: BLE001 - the reference's refusal is a result
                ref = f"{type(e).__name__}: {e}"
            rust_file = rust_dir / f"{path.name}.{loader}.rgb"
            if not rust_file.exists():
                print(f"{path.name:22} {loader:10} rust refused; PIL: {'ok' if isinstance(ref, np.ndarray) else ref}")
                continue
            raw = rust_file.read_bytes()
            head, data = raw.split(b"\n", 1)
            w, h = map(int, head.split())
            if isinstance(ref, str):
                print(f"{path.name:22} {loader:10} PIL refused ({ref}), rust decoded {w}x{h}")
                bad += 1
                continue
            got = np.frombuffer(data, np.uint8).reshape(h, w, 3)
            if got.shape != ref.shape:
                print(f"{path.name:22} {loader:10} SHAPE rust {got.shape} PIL {ref.shape}")
                bad += 1
                continue
            diff = np.abs(got.astype(int) - ref.astype(int))
            share = (diff > 0).mean()
            print(f"{path.name:22} {loader:10} {'exact' if share == 0 else 'DIFFERS'} {share:.4%} max {diff.max()}")
            bad += share > 0
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
