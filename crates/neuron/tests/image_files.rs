//! Bad image files, as a user sends them: truncated files of every format, an empty file, an
//! extension that lies, a 1×1 image, an image 100× the processor's max_pixels, and
//! decompression bombs. Each gets a clear error naming the file, or what the reference does
//! (measured with transformers 5.23.0 / Pillow 13.0.0, noted at each test); never a panic, and
//! a bomb is refused from its header under a memory limit.

use std::path::{Path, PathBuf};

use neuron::preprocess::image_file::{load_rgb_with, read_image, Loader};
use neuron::preprocess::Processor;
/// The workspace root: the fixtures live there.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn formats() -> PathBuf {
    root().join("fixtures/images/formats")
}

fn processor() -> Processor {
    Processor::from_dir(&root().join("fixtures/models/tiny-qwen3.6-27b")).unwrap()
}

/// A fresh scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("neuron-decode-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn load_error(path: &Path, loader: Loader) -> String {
    match load_rgb_with(path, loader) {
        Ok(img) => panic!("{} ({loader:?}) decoded to {}×{}; expected an error", path.display(), img.width, img.height),
        Err(e) => format!("{e:#}"),
    }
}

/// PIL refuses every one of these cut in half (`OSError: image file is truncated`, `could
/// not create decoder object` for WebP, `cannot identify image file` for the LZW TIFF).
#[test]
fn a_truncated_file_of_each_format_is_an_error_naming_the_file() {
    let dir = scratch("truncated");
    for name in [
        "interlaced.png",
        "png16-rgba.png",
        "progressive.jpg",
        "cmyk.jpg",
        "animated.gif",
        "lossy.webp",
        "lossless.webp",
        "alpha.webp",
        "image.bmp",
        "raw.tiff",
        "lzw.tiff",
    ] {
        let bytes = std::fs::read(formats().join(name)).unwrap();
        let cut = dir.join(format!("cut-{name}"));
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        for loader in [Loader::Processor, Loader::LoadImage] {
            let err = load_error(&cut, loader);
            assert!(
                err.contains(&cut.display().to_string()),
                "{name} ({loader:?}): the error does not name the file: {err}"
            );
        }
    }
}

/// PIL: `UnidentifiedImageError: cannot identify image file`.
#[test]
fn an_empty_file_is_an_error_saying_it_is_empty() {
    let path = scratch("empty").join("empty.png");
    std::fs::write(&path, b"").unwrap();
    let err = load_error(&path, Loader::Processor);
    assert!(err.contains("empty.png") && err.contains("empty (0 bytes)"), "{err}");
}

/// PIL identifies a file by its content, never by its extension; so does decoding here.
#[test]
fn a_file_whose_extension_lies_is_decoded_by_its_content_as_pil_does() {
    let dir = scratch("lies");
    for (real, lie) in [("palette.png", "palette.jpg"), ("lossy.webp", "lossy.png"), ("animated.gif", "animated.bmp")] {
        let liar = dir.join(lie);
        std::fs::copy(formats().join(real), &liar).unwrap();
        for loader in [Loader::Processor, Loader::LoadImage] {
            let honest = load_rgb_with(&formats().join(real), loader).unwrap();
            let got = load_rgb_with(&liar, loader).unwrap_or_else(|e| panic!("{lie} ({loader:?}): {e:#}"));
            assert!(got == honest, "{lie} ({loader:?}) decoded differently from {real}");
        }
    }
}

/// The reference (Qwen2VLImageProcessor, this model's config) turns a 1×1 image and a
/// 1568×1568 one (2 458 624 pixels, 100× max_pixels = 24 576) into an 8×8 patch grid each.
#[test]
fn a_one_pixel_image_and_one_of_100_times_max_pixels_take_the_references_grid() {
    let processor = processor();
    assert_eq!(processor.image.max_pixels(), 24_576, "the test's sizes assume this model's max_pixels");
    let dir = scratch("sizes");
    for side in [1u32, 1568] {
        let path = dir.join(format!("{side}.png"));
        image::RgbImage::from_pixel(side, side, image::Rgb([77, 77, 77])).save(&path).unwrap();
        let p = processor.process(&[&path], "Describe.").unwrap_or_else(|e| panic!("{side}×{side}: {e:#}"));
        let g = p.grids[0];
        assert_eq!((g.t, g.h, g.w), (1, 8, 8), "{side}×{side}: grid");
        let values = p.pixel_values.unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let first = values[0];
        assert!(values.iter().all(|&v| v == first), "{side}×{side}: a uniform image gave non-uniform pixel_values");
    }
}

/// Small files that declare a huge image: PIL's `Image.open` raises `DecompressionBombError`
/// ("Image size (N pixels) exceeds limit of 178956970 pixels, …") for each, from the header.
fn bombs() -> Vec<(&'static str, Vec<u8>)> {
    let png = {
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend(100_000u32.to_be_bytes());
        ihdr.extend(100_000u32.to_be_bytes());
        ihdr.extend([8, 2, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(13u32.to_be_bytes());
        png.extend(&ihdr);
        png.extend(crc32fast::hash(&ihdr).to_be_bytes());
        // PIL needs an IDAT to identify the file (with the header alone it raises
        // UnidentifiedImageError); 8 bytes of zlib data are plenty.
        for (kind, data) in [(&b"IDAT"[..], &[0x78, 0x9C, 0x63, 0, 0, 0, 1, 0][..]), (b"IEND", &[])] {
            let chunk: Vec<u8> = kind.iter().chain(data).copied().collect();
            png.extend((data.len() as u32).to_be_bytes());
            png.extend(&chunk);
            png.extend(crc32fast::hash(&chunk).to_be_bytes());
        }
        png
    };
    let gif = {
        let mut gif = b"GIF89a".to_vec();
        gif.extend([0xFF, 0xFF, 0xFF, 0xFF, 0x80, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF]);
        gif.extend([b',', 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 2, 2, 0x4C, 1, 0, b';']);
        gif
    };
    let patched = |name: &str, patch: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = std::fs::read(formats().join(name)).unwrap();
        patch(&mut bytes);
        bytes
    };
    // Progressive JPEG: the SOF2 segment's height and width.
    let jpeg = patched("progressive.jpg", &|b| {
        let at = b.windows(2).position(|w| w == [0xFF, 0xC2]).expect("a SOF2 marker");
        b[at + 5..at + 9].copy_from_slice(&[0xFD, 0xE8, 0xFD, 0xE8]); // 65000 × 65000
    });
    // BMP: BITMAPINFOHEADER width and height (60000, under the image crate's own 65535 cap).
    let bmp = patched("image.bmp", &|b| {
        b[18..22].copy_from_slice(&60_000i32.to_le_bytes());
        b[22..26].copy_from_slice(&60_000i32.to_le_bytes());
    });
    // Lossless WebP: the VP8L header's 14-bit width − 1 and height − 1, 16000 × 16000.
    let webp = patched("lossless.webp", &|b| {
        assert_eq!(&b[12..16], b"VP8L");
        let bits = u32::from_le_bytes(b[21..25].try_into().unwrap());
        let bits = (bits & !((1 << 28) - 1)) | 15999 | (15999 << 14);
        b[21..25].copy_from_slice(&bits.to_le_bytes());
    });
    // Uncompressed TIFF: ImageWidth (256) and ImageLength (257) in the first IFD, 65535 each.
    let tiff = patched("raw.tiff", &|b| {
        assert_eq!(&b[..2], b"II");
        let ifd = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
        let count = u16::from_le_bytes(b[ifd..ifd + 2].try_into().unwrap()) as usize;
        for e in (0..count).map(|i| ifd + 2 + 12 * i) {
            let tag = u16::from_le_bytes(b[e..e + 2].try_into().unwrap());
            if tag == 256 || tag == 257 {
                b[e + 2..e + 4].copy_from_slice(&4u16.to_le_bytes()); // LONG
                b[e + 8..e + 12].copy_from_slice(&65_535u32.to_le_bytes());
            }
        }
    });
    vec![("png", png), ("gif", gif), ("jpg", jpeg), ("bmp", bmp), ("webp", webp), ("tiff", tiff)]
}

/// Run by [`decompression_bombs_are_refused_under_a_memory_limit`] in a child process whose
/// address space is capped; on its own it proves only the refusal, not the bound.
#[test]
#[ignore = "run by decompression_bombs_are_refused_under_a_memory_limit in a child process under `ulimit -v`"]
fn decompression_bombs_are_refused_from_the_header() {
    let out = std::env::var_os("NEURON_BOMB_DIR").map(PathBuf::from);
    for (ext, bytes) in bombs() {
        if let Some(dir) = &out {
            std::fs::write(dir.join(format!("bomb.{ext}")), &bytes).unwrap();
        }
        let err = match read_image(&bytes) {
            Ok(d) => panic!("the {ext} bomb decoded to {}×{}", d.width, d.height),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.contains("exceeds limit of 178956970 pixels, could be decompression bomb"),
            "the {ext} bomb: not PIL's DecompressionBombError: {err}"
        );
    }
}

/// Each bomb declares 4.2–10 G pixels (12–30 GB as RGB); the child decoding them all may use
/// at most 1 GiB of address space, so an attempt to allocate the image would abort it.
#[test]
fn decompression_bombs_are_refused_under_a_memory_limit() {
    let exe = std::env::current_exe().unwrap();
    let dir = scratch("bombs");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -v 1048576 && exec "$0" --exact decompression_bombs_are_refused_from_the_header --ignored --test-threads 1"#)
        .arg(&exe)
        .env("NEURON_BOMB_DIR", &dir)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("1 passed"), "the child under a 1 GiB limit failed: {text}");
}
