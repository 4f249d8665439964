"""Writes the format-coverage images of fixtures/images/formats/ from the known images.

Deterministic: the same Pillow (pinned in uv.lock) writes the same bytes. Run with
`uv run --locked python make_images.py` from script/. `--edge DIR` also writes, to DIR
(not checked in), the further edge files that `check_decode.py` compares Rust's decoding on:
other bit depths, modes and compressions, 29 lossy WebPs, GIF frames smaller than the screen. What each file holds and how it was
made is listed in fixtures/images/README.md. PNG variants Pillow cannot write (16-bit RGB
and RGBA, interlaced) are written by the small PNG writer below.
"""

import argparse
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

IMAGES = Path(__file__).resolve().parent.parent / "fixtures" / "images"
OUT = IMAGES / "formats"


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path: Path, pixels: np.ndarray, color_type: int, interlace: bool = False) -> None:
    """pixels: [H, W, C] uint8 or uint16 (big-endian on disk), filter 0 on every row."""
    depth = 16 if pixels.dtype == np.uint16 else 8
    h, w = pixels.shape[:2]
    data = pixels.astype(">u2" if depth == 16 else "u1")

    def rows(img: np.ndarray) -> bytes:
        return b"".join(b"\x00" + img[y].tobytes() for y in range(img.shape[0]))

    if interlace:
        passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
        raw = b"".join(rows(data[y0::dy, x0::dx]) for x0, y0, dx, dy in passes if x0 < w and y0 < h)
    else:
        raw = rows(data)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 1 if interlace else 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    path.write_bytes(png)


def low_bits(h: int, w: int, channels: int) -> np.ndarray:
    """A fixed pattern for the low byte of 16-bit samples: >> 8 and / 257 then disagree."""
    y, x, c = np.mgrid[0:h, 0:w, 0:channels]
    return ((x * 37 + y * 11 + c * 101) % 256).astype(np.uint16)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    # 128×128 crops (the tiny model's minimum of 16384 pixels, so each image is 64 patches and
    # its pixel_values dump as small as it can be): chelsea's face in colour, camera in gray.
    base = Image.open(IMAGES / "chelsea.png").convert("RGB").crop((160, 30, 288, 158))
    # The colour crop with a radial alpha: opaque centre, graded ring, transparent corners.
    y, x = np.mgrid[0:128, 0:128]
    radius = np.hypot(x - 63.5, y - 63.5)
    alpha = np.clip((60 - radius) * 255 / 30, 0, 255).astype(np.uint8)
    logo = Image.fromarray(np.dstack([np.asarray(base), alpha]), "RGBA")
    gray = Image.open(IMAGES / "camera.png").convert("L").crop((200, 60, 328, 188))
    rgb8 = np.asarray(base)
    rgba8 = np.asarray(logo)
    gray8 = np.asarray(gray)

    # 16-bit PNGs: the high byte is the 8-bit image, the low byte a fixed pattern.
    write_png(OUT / "png16-rgb.png", (rgb8.astype(np.uint16) << 8) | low_bits(*rgb8.shape), 2)
    write_png(OUT / "png16-rgba.png", (rgba8.astype(np.uint16) << 8) | low_bits(*rgba8.shape), 6)
    # 16-bit grayscale spans the whole 16-bit range, as a scanner's output does.
    g16 = (gray8.astype(np.uint16) << 8) | low_bits(*gray8.shape, 1)[..., 0]
    write_png(OUT / "png16-gray.png", g16[..., None], 0)
    # Adam7-interlaced 8-bit RGB.
    write_png(OUT / "interlaced.png", rgb8, 2, interlace=True)
    # Gray + alpha (8-bit): the camera crop with a horizontal alpha ramp.
    ramp = np.tile(np.linspace(0, 255, gray8.shape[1]).astype(np.uint8), (gray8.shape[0], 1))
    Image.fromarray(np.dstack([gray8, ramp]), "LA").save(OUT / "gray-alpha.png")
    # Palette PNGs: 64 colours by median cut; the second with a tRNS chunk of graded alphas.
    pal = base.quantize(64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    pal.save(OUT / "palette.png")
    pal.save(OUT / "palette-trns.png", transparency=bytes(range(0, 256, 16)))
    # An animated GIF: two frames, the first a palette image whose index 0 is transparent and
    # whose index 1 has index 0's colour but is opaque: the processor loader (transparency by
    # index) keeps those pixels, load_image (transparency by colour after convert("RGB"))
    # turns them white.
    first = pal.copy()
    colours = first.getpalette()
    colours[3:6] = colours[0:3]
    first.putpalette(colours)
    frame2 = base.transpose(Image.Transpose.FLIP_LEFT_RIGHT).quantize(64, dither=Image.Dither.NONE)
    first.save(
        OUT / "animated.gif", save_all=True, append_images=[frame2], transparency=0, duration=100, loop=0, optimize=False
    )
    # WebP: lossy, lossless, lossless with alpha.
    base.save(OUT / "lossy.webp", quality=80, method=4)
    base.save(OUT / "lossless.webp", lossless=True)
    logo.save(OUT / "alpha.webp", lossless=True)
    # BMP and TIFF.
    base.save(OUT / "image.bmp")
    base.save(OUT / "raw.tiff", compression=None)
    base.save(OUT / "lzw.tiff", compression="tiff_lzw")
    # JPEG variants.
    base.save(OUT / "progressive.jpg", quality=90, progressive=True)
    gray.save(OUT / "gray.jpg", quality=90)
    base.convert("CMYK").save(OUT / "cmyk.jpg", quality=90)
    # EXIF orientations 1–8 on the same (unrotated) pixels.
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        base.save(OUT / f"exif-{orientation}.jpg", quality=90, exif=exif)


def exif(orientation: int) -> Image.Exif:
    e = Image.Exif()
    e[0x0112] = orientation
    return e


def edge_files(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    src = Image.open(IMAGES / "chelsea.png").convert("RGB").crop((150, 40, 294, 136))
    a = np.asarray(src)
    ramp = np.tile(np.linspace(0, 255, 144).astype(np.uint8), (96, 1))
    rgba = Image.fromarray(np.dstack([a, ramp]), "RGBA")
    rgba.save(out / "rgba.bmp")
    src.convert("P").save(out / "pal8.bmp")
    src.convert("1").save(out / "bw.bmp")
    src.convert("L").save(out / "gray.bmp")
    src.save(out / "rle.tiff", compression="packbits")
    src.save(out / "deflate.tiff", compression="tiff_adobe_deflate")
    src.convert("L").save(out / "gray.tiff")
    rgba.save(out / "rgba.tiff")
    src.convert("CMYK").save(out / "cmyk.tiff")
    src.convert("1").save(out / "bw.png")
    src.convert("L").quantize(4).save(out / "pal2bit.png", bits=2)
    src.convert("L").save(out / "gray-trns.png", transparency=128)
    src.save(out / "rgb-trns.png", transparency=tuple(int(v) for v in a[10, 10]))
    pal = src.quantize(64)
    pal.save(out / "pal-simple-trns.png", transparency=5)
    src.convert("L").save(out / "gray.gif")
    pal.save(out / "notrans.gif")
    second = pal.copy()
    second.paste(0, (10, 10, 40, 40))
    pal.save(out / "anim-notrans.gif", save_all=True, append_images=[second])
    src.save(out / "exif-6.webp", exif=exif(6))
    src.save(out / "exif-6.png", exif=exif(6))
    src.save(out / "exif-8.tiff", exif=exif(8))
    src.save(out / "q100-444.jpg", quality=100, subsampling=0)
    src.save(out / "q50-422.jpg", quality=50, subsampling=1)
    # 16-bit gray + alpha (PIL opens it as RGBA, high bytes).
    v = np.array([[0, 1, 200, 255, 256, 300, 65535, 0x1234]], dtype=np.uint16)
    write_png(out / "la16.png", np.dstack([v, v[:, ::-1]]), 4)
    # GIFs whose first frame (64×64) sits at (10, 20) of a 128×100 screen, with and without
    # a transparent index: the screen size and frame position patched into Pillow's file.
    small = Image.open(IMAGES / "chelsea.png").convert("RGB").crop((160, 30, 224, 94)).quantize(32)
    for name, kw in [("small-frame.gif", {}), ("small-frame-trns.gif", {"transparency": 3})]:
        small.save(out / name, **kw)
        b = bytearray((out / name).read_bytes())
        b[6:10] = struct.pack("<HH", 128, 100)
        at = b.index(b",", 13 + 3 * 2 ** ((b[10] & 7) + 1))
        b[at + 1 : at + 5] = struct.pack("<HH", 10, 20)
        (out / name).write_bytes(b)
    # Lossy WebP at qualities 5–100, of every known image; alpha for the RGBA one.
    for p in sorted(IMAGES.glob("*.png")) + [IMAGES / "rocket.jpg"]:
        im = Image.open(p)
        for q in (5, 50, 95, 100):
            im.save(out / f"{p.stem}-q{q}.webp", quality=q, method=6 if q == 50 else 4)
        if im.mode == "RGBA":
            im.save(out / f"{p.stem}-alpha-q30.webp", quality=30, alpha_quality=40)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edge", type=Path, help="also write the edge files to this folder")
    args = parser.parse_args()
    main()
    if args.edge:
        edge_files(args.edge)
