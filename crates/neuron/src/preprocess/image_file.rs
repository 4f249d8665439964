//! Image file → 8-bit RGB exactly as the reference opens it, by either of its two loaders
//! ([`Loader`]):
//!
//! - `processor`: `PIL.Image.open`, then the image processor's `convert_to_rgb`
//!   (`transformers/image_transforms.py`): an image with an alpha band or a `transparency`
//!   entry is converted to RGBA and composited onto opaque white (`Image.alpha_composite`),
//!   any other is `convert("RGB")`. EXIF orientation is ignored.
//! - `load_image` (`transformers/image_utils.py`): `ImageOps.exif_transpose`, then
//!   `convert("RGB")`, which drops alpha without compositing. A single transparent colour
//!   survives that conversion as `info["transparency"]` (an RGB tuple), so the processor's
//!   `convert_to_rgb` that follows turns every pixel of exactly that colour white.
//!
//! Formats, and what PIL does that a port must follow (each checked byte for byte against
//! Pillow 13.0.0, see docs/IMAGE_FORMATS.md):
//! - PNG: 16-bit RGB and RGBA keep the high byte; 16-bit grayscale opens as `I;16`, whose
//!   conversion to RGB clips at 255 (it does not scale); palette and `tRNS` transparency.
//! - JPEG: libjpeg-turbo's code (mozjpeg); CMYK is inverted as Pillow's `CMYK;I` raw mode
//!   assumes for every four-component JPEG, then converted with Pillow's `cmyk2rgb`.
//! - GIF: the first frame only, as a palette image with its transparent index.
//! - TIFF: its orientation tag is applied by Pillow's TIFF plugin itself, for both loaders.
//! - WebP (lossy, lossless, alpha), BMP, TIFF: through the `image` crate (`image-webp`
//!   reproduces libwebp's decoder, fancy upsampling included, on every file tried).
//!
//! Sizes: an image of more than twice `PIL.Image.MAX_IMAGE_PIXELS` pixels is refused before
//! any pixel is decoded, with PIL's `DecompressionBombError` message, so memory stays bounded.

use std::io::Cursor;
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use image::{DynamicImage, ImageFormat};

/// How the reference turned an image file into RGB pixels (a case's `loader` in the harness).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Loader {
    /// `PIL.Image.open`, then `image_transforms.convert_to_rgb`: EXIF orientation ignored,
    /// transparency composited onto white.
    #[default]
    Processor,
    /// `image_utils.load_image`: `ImageOps.exif_transpose`, then `convert("RGB")` (alpha
    /// dropped, not composited).
    LoadImage,
}

impl Loader {
    /// The name of the reference's function (`processor`, `load_image`).
    pub fn name(self) -> &'static str {
        match self {
            Loader::Processor => "processor",
            Loader::LoadImage => "load_image",
        }
    }
}

/// An 8-bit RGB image, rows top to bottom, pixels interleaved (HWC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// `PIL.Image.MAX_IMAGE_PIXELS`: above it PIL warns, above twice it `Image.open` raises
/// `DecompressionBombError`.
pub const MAX_IMAGE_PIXELS: u64 = 89_478_485;

/// A decoded image before the loader's conversion: straight (not premultiplied) 8-bit
/// samples, 3 (RGB) or 4 (RGBA) per pixel, rows top to bottom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawImage {
    pub width: usize,
    pub height: usize,
    /// 3 or 4.
    pub channels: usize,
    pub data: Vec<u8>,
    /// A single transparent colour that PIL keeps in `info["transparency"]` through
    /// `convert("RGB")` (a palette image's transparent index, a grayscale or RGB `tRNS`
    /// colour); `None` when there is none or PIL drops it (a palette `tRNS` of graded alphas).
    pub transparent_rgb: Option<[u8; 3]>,
    /// The EXIF orientation (1–8; 1 when absent or invalid).
    pub orientation: u16,
}

/// Reads and decodes an image file, then converts it to RGB as `loader` does.
pub fn load_rgb_with(path: &Path, loader: Loader) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read the image", path.display()))?;
    read_image(&bytes).map(|d| convert(d, loader)).with_context(|| format!("{}", path.display()))
}

/// Decodes an image by its content (the file name's extension is not consulted, as PIL
/// does not consult it).
pub fn read_image(bytes: &[u8]) -> Result<RawImage> {
    ensure!(!bytes.is_empty(), "the file is empty (0 bytes): not an image");
    let format = image::guess_format(bytes).map_err(|_| {
        anyhow!("not an image in a known format (PNG, JPEG, GIF, WebP, BMP and TIFF are read; the content decides)")
    })?;
    let mut decoded = match format {
        ImageFormat::Jpeg => read_jpeg(bytes)?,
        ImageFormat::Gif => read_gif(bytes)?,
        ImageFormat::Png => read_png(bytes)?,
        ImageFormat::WebP => {
            check_webp_size(bytes)?;
            read_with_image_crate(bytes, format)?
        }
        ImageFormat::Tiff => {
            if let Some((w, h)) = tiff_size(bytes) {
                check_size(w, h)?;
            }
            read_with_image_crate(bytes, format)?
        }
        ImageFormat::Bmp => read_with_image_crate(bytes, format)?,
        other => bail!("{other:?} images are not read (PNG, JPEG, GIF, WebP, BMP and TIFF are)"),
    };
    decoded.orientation = exif_orientation(bytes);
    if format == ImageFormat::Tiff {
        // Pillow's TIFF plugin applies the orientation itself when it loads the pixels
        // (`TiffImageFile.load_end` calls `exif_transpose(self, in_place=True)`), so both
        // loaders see the upright image, and load_image's own transpose finds nothing to do.
        let d = &decoded;
        (decoded.width, decoded.height, decoded.data) =
            orient_pixels(d.width, d.height, d.channels, &d.data, d.orientation);
        decoded.orientation = 1;
    }
    Ok(decoded)
}

/// The loader's conversion of a decoded image to RGB (see the module documentation).
pub fn convert(decoded: RawImage, loader: Loader) -> RgbImage {
    match loader {
        Loader::Processor => {
            let RawImage { width, height, channels, data, .. } = decoded;
            let data = if channels == 4 {
                composite_on_white(data.chunks_exact(4).map(|p| [p[0], p[1], p[2], p[3]]))
            } else {
                data
            };
            RgbImage { width, height, data }
        }
        Loader::LoadImage => {
            let orientation = decoded.orientation;
            let RawImage { width, height, channels, data, transparent_rgb, .. } = decoded;
            let mut rgb: Vec<u8> =
                if channels == 4 { data.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect() } else { data };
            if let Some(colour) = transparent_rgb {
                for p in rgb.chunks_exact_mut(3) {
                    if p == colour {
                        p.copy_from_slice(&[255, 255, 255]);
                    }
                }
            }
            orient(&RgbImage { width, height, data: rgb }, orientation)
        }
    }
}

/// PIL's `Image.alpha_composite(white, image).convert("RGB")` (libImaging/AlphaComposite.c),
/// in its integer arithmetic, so the result matches to the last bit.
pub(crate) fn composite_on_white(pixels: impl Iterator<Item = [u8; 4]>) -> Vec<u8> {
    const PRECISION_BITS: u32 = 7;
    let shift_div_255 = |a: u32| ((a >> 8) + a) >> 8;
    let mut out = Vec::new();
    for [r, g, b, a] in pixels {
        if a == 0 {
            out.extend([255, 255, 255]);
            continue;
        }
        let (a, dst_a, dst) = (a as u32, 255u32, 255u32);
        let blend = dst_a * (255 - a);
        let outa255 = a * 255 + blend;
        let coef1 = a * 255 * 255 * (1 << PRECISION_BITS) / outa255;
        let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
        for c in [r, g, b] {
            let tmp = c as u32 * coef1 + dst * coef2;
            out.push((shift_div_255(tmp + (0x80 << PRECISION_BITS)) >> PRECISION_BITS) as u8);
        }
    }
    out
}

/// `ImageOps.exif_transpose`'s transposition for an EXIF orientation: 2 FLIP_LEFT_RIGHT,
/// 3 ROTATE_180, 4 FLIP_TOP_BOTTOM, 5 TRANSPOSE, 6 ROTATE_270, 7 TRANSVERSE, 8 ROTATE_90
/// (PIL's rotations are counter-clockwise); anything else leaves the image as it is.
pub fn orient(img: &RgbImage, orientation: u16) -> RgbImage {
    let (width, height, data) = orient_pixels(img.width, img.height, 3, &img.data, orientation);
    RgbImage { width, height, data }
}

/// [`orient`] on interleaved pixels of `channels` samples; returns (width, height, data).
fn orient_pixels(w: usize, h: usize, channels: usize, data: &[u8], orientation: u16) -> (usize, usize, Vec<u8>) {
    if !(2..=8).contains(&orientation) {
        return (w, h, data.to_vec());
    }
    let (ow, oh) = if orientation >= 5 { (h, w) } else { (w, h) };
    // For each output pixel (x, y), the source pixel (sx, sy).
    let source = |x: usize, y: usize| -> (usize, usize) {
        match orientation {
            2 => (w - 1 - x, y),
            3 => (w - 1 - x, h - 1 - y),
            4 => (x, h - 1 - y),
            5 => (y, x),
            6 => (y, h - 1 - x),
            7 => (w - 1 - y, h - 1 - x),
            _ => (w - 1 - y, x),
        }
    };
    let mut out = Vec::with_capacity(data.len());
    for y in 0..oh {
        for x in 0..ow {
            let (sx, sy) = source(x, y);
            let i = (sy * w + sx) * channels;
            out.extend_from_slice(&data[i..i + channels]);
        }
    }
    (ow, oh, out)
}

/// Refuses what `Image.open` refuses by size: no pixels, or more than twice
/// `MAX_IMAGE_PIXELS` (PIL's `DecompressionBombError`, with its message).
fn check_size(width: u64, height: u64) -> Result<()> {
    ensure!(width > 0 && height > 0, "the image is {width}×{height}: it has no pixels");
    let pixels = width * height;
    ensure!(
        pixels <= 2 * MAX_IMAGE_PIXELS,
        "Image size ({pixels} pixels) exceeds limit of {} pixels, could be decompression bomb DOS attack \
         (PIL's DecompressionBombError; the image declares {width}×{height})",
        2 * MAX_IMAGE_PIXELS
    );
    Ok(())
}

/// libjpeg-turbo's decoder (through mozjpeg) with PIL's settings: islow IDCT, fancy
/// upsampling; gray and YCbCr to RGB by libjpeg; CMYK (and YCCK) read as CMYK, inverted
/// (Pillow's `CMYK;I`), then Pillow's `cmyk2rgb`. libjpeg reports fatal errors by
/// unwinding, which becomes an error here; a missing end-of-image marker (a truncated file,
/// which PIL refuses) is an error too.
fn read_jpeg(bytes: &[u8]) -> Result<RawImage> {
    ensure!(bytes.windows(2).any(|w| w == [0xFF, 0xD9]), "the JPEG is truncated (no end-of-image marker)");
    let decoded = std::panic::catch_unwind(|| -> Result<RawImage> {
        let header = mozjpeg::Decompress::new_mem(bytes)?;
        let (width, height) = (header.width(), header.height());
        check_size(width as u64, height as u64)?;
        let cmyk = mozjpeg::ColorSpaceExt::num_components(&header.color_space()) == 4;
        let (channels, data) = if cmyk {
            let mut started = header.to_colorspace(mozjpeg::ColorSpace::JCS_CMYK)?;
            let data: Vec<u8> = started.read_scanlines()?;
            started.finish()?;
            (4, data)
        } else {
            let mut started = header.rgb()?;
            let data: Vec<u8> = started.read_scanlines()?;
            started.finish()?;
            (3, data)
        };
        ensure!(data.len() == width * height * channels, "the JPEG decoded to fewer rows than its header promises");
        let data = if cmyk { data.chunks_exact(4).flat_map(cmyk_inverted_to_rgb).collect() } else { data };
        Ok(RawImage { width, height, channels: 3, data, transparent_rgb: None, orientation: 1 })
    });
    match decoded {
        Ok(result) => result.context("cannot decode the JPEG"),
        Err(panic) => {
            let msg = panic.downcast_ref::<String>().cloned().unwrap_or_else(|| "libjpeg failed".into());
            bail!("cannot decode the JPEG: {msg}");
        }
    }
}

/// Pillow's `CMYK;I` unpacking (each sample inverted) followed by `cmyk2rgb`
/// (libImaging/Convert.c): `nk = 255 − k`, each of R, G, B = `nk − c·nk/255` with
/// `MULDIV255`'s rounding.
fn cmyk_inverted_to_rgb(p: &[u8]) -> [u8; 3] {
    let muldiv255 = |a: u32, b: u32| {
        let tmp = a * b + 128;
        ((tmp >> 8) + tmp) >> 8
    };
    let [c, m, y, k] = [p[0], p[1], p[2], p[3]].map(|v| 255 - v as u32);
    let nk = 255 - k;
    [c, m, y].map(|v| (nk - muldiv255(v, nk)).min(255) as u8)
}

/// The first frame of a GIF as PIL opens it: a palette image of the logical screen's size,
/// filled with the transparent index (or 0) where the frame does not cover it; the palette
/// index that the graphic control extension names transparent is transparent.
fn read_gif(bytes: &[u8]) -> Result<RawImage> {
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::Indexed);
    let mut decoder = options.read_info(Cursor::new(bytes)).context("cannot decode the GIF")?;
    let (width, height) = (decoder.width() as usize, decoder.height() as usize);
    check_size(width as u64, height as u64)?;
    let global = decoder.global_palette().map(<[u8]>::to_vec);
    let frame = decoder
        .read_next_frame()
        .context("cannot decode the GIF's first frame (is the file complete?)")?
        .ok_or_else(|| anyhow!("the GIF has no frame"))?;
    let palette = frame.palette.clone().or(global).ok_or_else(|| anyhow!("the GIF has no palette"))?;
    let transparent = frame.transparent;
    let mut indices = vec![transparent.unwrap_or(0); width * height];
    let (left, top, fw, fh) = (frame.left as usize, frame.top as usize, frame.width as usize, frame.height as usize);
    ensure!(frame.buffer.len() == fw * fh, "the GIF's first frame is incomplete");
    for row in 0..fh {
        let y = top + row;
        if y >= height {
            break;
        }
        for col in 0..fw.min(width.saturating_sub(left)) {
            indices[y * width + left + col] = frame.buffer[row * fw + col];
        }
    }
    let colour = |i: u8| -> [u8; 3] {
        let i = i as usize * 3;
        palette.get(i..i + 3).map_or([0, 0, 0], |c| [c[0], c[1], c[2]])
    };
    let Some(t) = transparent else {
        let data = indices.iter().flat_map(|&i| colour(i)).collect();
        return Ok(RawImage { width, height, channels: 3, data, transparent_rgb: None, orientation: 1 });
    };
    let data = indices
        .iter()
        .flat_map(|&i| {
            let [r, g, b] = colour(i);
            [r, g, b, if i == t { 0 } else { 255 }]
        })
        .collect();
    Ok(RawImage { width, height, channels: 4, data, transparent_rgb: Some(colour(t)), orientation: 1 })
}

/// What the PNG's header chunks say about transparency, for PIL's `info["transparency"]`.
struct PngHeader {
    width: u32,
    height: u32,
    color_type: u8,
    bit_depth: u8,
    palette: Vec<u8>,
    trns: Option<Vec<u8>>,
}

/// Reads IHDR, PLTE and tRNS (chunks before the image data); stops at a truncated chunk.
fn png_header(bytes: &[u8]) -> Result<PngHeader> {
    let mut header = PngHeader { width: 0, height: 0, color_type: 0, bit_depth: 0, palette: Vec::new(), trns: None };
    let mut at = 8;
    while at + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let kind = &bytes[at + 4..at + 8];
        let Some(data) = bytes.get(at + 8..at + 8 + len) else { break };
        match kind {
            b"IHDR" if len >= 13 => {
                header.width = u32::from_be_bytes(data[0..4].try_into().expect("4 bytes"));
                header.height = u32::from_be_bytes(data[4..8].try_into().expect("4 bytes"));
                (header.bit_depth, header.color_type) = (data[8], data[9]);
            }
            b"PLTE" => header.palette = data.to_vec(),
            b"tRNS" => header.trns = Some(data.to_vec()),
            b"IDAT" | b"IEND" => break,
            _ => {}
        }
        at += 12 + len;
    }
    Ok(header)
}

/// PNG through the `image` crate (which expands palettes and `tRNS` into alpha as PIL's
/// `convert("RGBA")` does), with PIL's mode rules: 16-bit RGB, RGBA, gray + alpha keep the
/// high byte; 16-bit gray (`I;16`) clips at 255.
fn read_png(bytes: &[u8]) -> Result<RawImage> {
    let header = png_header(bytes)?;
    check_size(header.width as u64, header.height as u64)?;
    let trns = header.trns.as_deref();
    ensure!(
        !(header.bit_depth == 16 && trns.is_some()),
        "a 16-bit PNG with a tRNS transparent colour is refused: PIL's handling of it (a 16-bit \
         transparency value on 8-bit pixels) has not been reproduced"
    );
    // PIL's chunk_tRNS: a palette tRNS with exactly one 0 and otherwise 255 is a transparent
    // index (kept as a colour by convert("RGB")); graded alphas are dropped by convert("RGB").
    let transparent_rgb = match (header.color_type, trns) {
        (3, Some(t)) => {
            let simple = t.iter().filter(|&&a| a == 0).count() == 1 && t.iter().all(|&a| a == 0 || a == 255);
            let index = t.iter().position(|&a| a == 0);
            match (simple, index) {
                (true, Some(i)) => Some(header.palette.get(i * 3..i * 3 + 3).map_or([0; 3], |c| [c[0], c[1], c[2]])),
                _ => None,
            }
        }
        (0, Some(t)) if t.len() >= 2 && header.bit_depth == 8 => Some([t[1]; 3]),
        (2, Some(t)) if t.len() >= 6 && header.bit_depth == 8 => Some([t[1], t[3], t[5]]),
        _ => None,
    };
    let image = load_limited(bytes, ImageFormat::Png).context("cannot decode the PNG (is the file complete?)")?;
    let mut decoded = from_dynamic(image)?;
    decoded.transparent_rgb = transparent_rgb;
    Ok(decoded)
}

/// Decodes with the `image` crate after checking the declared size, within a memory limit
/// large enough for PIL's largest accepted image.
fn load_limited(bytes: &[u8], format: ImageFormat) -> Result<DynamicImage> {
    let reader = || image::ImageReader::with_format(Cursor::new(bytes), format);
    let (w, h) = reader().into_dimensions().context("cannot read the image's header")?;
    check_size(w as u64, h as u64)?;
    let mut limits = image::Limits::default();
    // RGBA with 16-bit samples at twice MAX_IMAGE_PIXELS, plus the decoder's working rows.
    limits.max_alloc = Some(2 * MAX_IMAGE_PIXELS * 8 + (64 << 20));
    let mut r = reader();
    r.limits(limits);
    Ok(r.decode()?)
}

fn read_with_image_crate(bytes: &[u8], format: ImageFormat) -> Result<RawImage> {
    let image = load_limited(bytes, format).with_context(|| format!("cannot decode the {format:?} image"))?;
    from_dynamic(image)
}

/// The `image` crate's pixels in PIL's 8-bit modes.
pub(crate) fn from_dynamic(image: DynamicImage) -> Result<RawImage> {
    let (width, height) = (image.width() as usize, image.height() as usize);
    check_size(width as u64, height as u64)?;
    let hi = |v: u16| (v >> 8) as u8;
    let (channels, data): (usize, Vec<u8>) = match image {
        DynamicImage::ImageRgb8(img) => (3, img.into_raw()),
        DynamicImage::ImageRgba8(img) => (4, img.into_raw()),
        DynamicImage::ImageLuma8(img) => (3, img.into_raw().iter().flat_map(|&l| [l, l, l]).collect()),
        DynamicImage::ImageLumaA8(img) => {
            (4, img.into_raw().chunks_exact(2).flat_map(|p| [p[0], p[0], p[0], p[1]]).collect())
        }
        DynamicImage::ImageRgb16(img) => (3, img.into_raw().iter().map(|&v| hi(v)).collect()),
        DynamicImage::ImageRgba16(img) => (4, img.into_raw().iter().map(|&v| hi(v)).collect()),
        // `I;16` → `L` (and RGB) in libImaging/Convert.c clips: values above 255 become 255.
        DynamicImage::ImageLuma16(img) => (3, img.into_raw().iter().flat_map(|&v| [v.min(255) as u8; 3]).collect()),
        DynamicImage::ImageLumaA16(img) => {
            (4, img.into_raw().chunks_exact(2).flat_map(|p| [hi(p[0]), hi(p[0]), hi(p[0]), hi(p[1])]).collect())
        }
        other => bail!(
            "the image has {:?} pixels, which are not reproduced exactly (8- and 16-bit gray, RGB and their \
             alpha variants are)",
            other.color()
        ),
    };
    Ok(RawImage { width, height, channels, data, transparent_rgb: None, orientation: 1 })
}

/// A simple lossless WebP (`VP8L` first) declares 14-bit width − 1 and height − 1. image-webp
/// 0.2 computes `(1 + field) & 0x3FFF` and so reads a side of 16384 as 0: such a file is
/// refused here by name rather than with a misleading "0×0".
fn check_webp_size(bytes: &[u8]) -> Result<()> {
    if bytes.len() >= 25 && &bytes[12..16] == b"VP8L" {
        let bits = u32::from_le_bytes(bytes[21..25].try_into().expect("4 bytes"));
        let (w, h) = (1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF));
        check_size(w as u64, h as u64)?;
        ensure!(
            w < 16384 && h < 16384,
            "a lossless WebP {w}×{h} pixels is refused: the Rust decoder (image-webp 0.2) misreads a side of \
             16384 pixels as 0"
        );
    }
    Ok(())
}

/// ImageWidth and ImageLength of a TIFF's first IFD, read before the tiff crate sees the file
/// (which checks strip sizes against them first and would refuse a bomb with a less telling
/// error than PIL's).
fn tiff_size(b: &[u8]) -> Option<(u64, u64)> {
    let little = match b.get(..2)? {
        b"II" => true,
        b"MM" => false,
        _ => return None,
    };
    let u16_at = |at: usize| -> Option<u64> {
        let v: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
        Some(u64::from(if little { u16::from_le_bytes(v) } else { u16::from_be_bytes(v) }))
    };
    let u32_at = |at: usize| -> Option<u64> {
        let v: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(u64::from(if little { u32::from_le_bytes(v) } else { u32::from_be_bytes(v) }))
    };
    let ifd = u32_at(4)? as usize;
    let (mut width, mut height) = (None, None);
    for entry in (0..u16_at(ifd)? as usize).map(|i| ifd + 2 + 12 * i) {
        let value = match u16_at(entry + 2)? {
            3 => u16_at(entry + 8)?,
            4 => u32_at(entry + 8)?,
            _ => continue,
        };
        match u16_at(entry)? {
            256 => width = Some(value),
            257 => height = Some(value),
            _ => {}
        }
    }
    Some((width?, height?))
}

/// The EXIF orientation of a JPEG, PNG, WebP or TIFF file; 1 when there is none or it is
/// not one of 1–8 (`exif_transpose` then leaves the image as it is).
fn exif_orientation(bytes: &[u8]) -> u16 {
    let Ok(exif) = exif::Reader::new().read_from_container(&mut Cursor::new(bytes)) else { return 1 };
    exif.get_field(exif::Tag::Orientation, exif::In::PRIMARY)
        .and_then(|f| f.value.get_uint(0))
        .and_then(|v| u16::try_from(v).ok())
        .filter(|v| (1..=8).contains(v))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(width: usize, height: usize) -> RgbImage {
        let data = (0..width * height).flat_map(|i| [i as u8, 0, 0]).collect();
        RgbImage { width, height, data }
    }

    fn reds(img: &RgbImage) -> Vec<u8> {
        img.data.chunks_exact(3).map(|p| p[0]).collect()
    }

    /// PIL on the 3×2 image [[0 1 2] [3 4 5]]: `ImageOps.exif_transpose` with each orientation
    /// (values printed by Pillow 13.0.0).
    #[test]
    fn each_exif_orientation_transposes_as_pil_does() {
        let img = numbered(3, 2);
        let expected: [(u16, (usize, usize), [u8; 6]); 8] = [
            (1, (3, 2), [0, 1, 2, 3, 4, 5]),
            (2, (3, 2), [2, 1, 0, 5, 4, 3]),
            (3, (3, 2), [5, 4, 3, 2, 1, 0]),
            (4, (3, 2), [3, 4, 5, 0, 1, 2]),
            (5, (2, 3), [0, 3, 1, 4, 2, 5]),
            (6, (2, 3), [3, 0, 4, 1, 5, 2]),
            (7, (2, 3), [5, 2, 4, 1, 3, 0]),
            (8, (2, 3), [2, 5, 1, 4, 0, 3]),
        ];
        for (o, (w, h), values) in expected {
            let out = orient(&img, o);
            assert_eq!((out.width, out.height), (w, h), "orientation {o}: size");
            assert_eq!(reds(&out), values, "orientation {o}: pixels");
        }
        assert_eq!(orient(&img, 9), img, "an invalid orientation leaves the image as it is");
    }

    #[test]
    fn cmyk_follows_pillows_inverted_raw_mode_and_cmyk2rgb() {
        // Stored (inverted) samples: 255 is no ink. Values printed by Pillow 13.0.0 for
        // Image.frombytes("CMYK", (1, 1), bytes(255 - v for v in p), "raw", "CMYK;I").convert("RGB").
        assert_eq!(cmyk_inverted_to_rgb(&[255, 255, 255, 255]), [255, 255, 255]);
        assert_eq!(cmyk_inverted_to_rgb(&[0, 0, 0, 0]), [0, 0, 0]);
        assert_eq!(cmyk_inverted_to_rgb(&[255, 128, 0, 200]), [200, 100, 0]);
    }

    #[test]
    fn load_image_whitens_exactly_the_transparent_colour_and_drops_alpha() {
        let decoded = RawImage {
            width: 3,
            height: 1,
            channels: 4,
            data: vec![1, 2, 3, 0, 1, 2, 3, 255, 9, 9, 9, 0],
            transparent_rgb: Some([1, 2, 3]),
            orientation: 1,
        };
        assert_eq!(convert(decoded.clone(), Loader::LoadImage).data, [255, 255, 255, 255, 255, 255, 9, 9, 9]);
        assert_eq!(convert(decoded, Loader::Processor).data, [255, 255, 255, 1, 2, 3, 255, 255, 255]);
    }

    #[test]
    fn transparent_pixels_become_white_and_opaque_ones_keep_their_colour() {
        let out = composite_on_white([[10, 20, 30, 0], [10, 20, 30, 255], [0, 0, 0, 128]].into_iter());
        assert_eq!(&out[..6], &[255, 255, 255, 10, 20, 30]);
        assert!((126..=128).contains(&out[6]), "half-transparent black over white is mid grey, got {}", out[6]);
    }

    /// A GIF whose first frame covers only part of the screen: the frame's pixels land at its
    /// left and top offsets, the rest keeps index 0 (no transparent index).
    #[test]
    fn a_gif_frame_smaller_than_the_screen_is_placed_at_its_offsets() {
        let palette = [0, 0, 0, 10, 20, 30, 40, 50, 60, 70, 80, 90];
        let mut bytes = Vec::new();
        {
            let mut encoder = gif::Encoder::new(&mut bytes, 4, 3, &palette).unwrap();
            let mut frame = gif::Frame { left: 1, top: 1, width: 3, height: 1, ..gif::Frame::default() };
            frame.buffer = std::borrow::Cow::Owned(vec![1, 2, 3]);
            encoder.write_frame(&frame).unwrap();
        }
        let decoded = read_gif(&bytes).unwrap();
        assert_eq!((decoded.width, decoded.height, decoded.channels), (4, 3, 3));
        let pixels: Vec<[u8; 3]> = decoded.data.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect();
        let (black, one, two, three) = ([0, 0, 0], [10, 20, 30], [40, 50, 60], [70, 80, 90]);
        let expected = [[black; 4], [black, one, two, three], [black; 4]].concat();
        assert_eq!(pixels, expected, "rows of the 4×3 screen, the 3×1 frame at (1, 1)");
    }

    /// PLTE and tRNS may follow long ancillary chunks (text, ICC profiles): the header walk goes
    /// on to the image data, however far that is.
    #[test]
    fn a_png_palette_after_a_long_text_chunk_is_still_read() {
        let chunk = |kind: &[u8; 4], data: &[u8]| -> Vec<u8> {
            // The CRC is not checked by the header walk; zero is enough.
            [&(data.len() as u32).to_be_bytes()[..], kind, data, &[0; 4]].concat()
        };
        let ihdr = [&3u32.to_be_bytes()[..], &2u32.to_be_bytes(), &[8, 3, 0, 0, 0]].concat();
        let bytes = [
            &b"\x89PNG\r\n\x1a\n"[..],
            &chunk(b"IHDR", &ihdr),
            &chunk(b"tEXt", &[b'x'; 4000]),
            &chunk(b"PLTE", &[1, 2, 3, 4, 5, 6]),
            &chunk(b"tRNS", &[0]),
            &chunk(b"IDAT", &[]),
            &chunk(b"IEND", &[]),
        ]
        .concat();
        let header = png_header(&bytes).unwrap();
        assert_eq!((header.width, header.height, header.bit_depth, header.color_type), (3, 2, 8, 3));
        assert_eq!(header.palette, [1, 2, 3, 4, 5, 6], "PLTE after 4000 bytes of tEXt");
        assert_eq!(header.trns, Some(vec![0]), "tRNS after it");
    }

    #[test]
    fn a_size_beyond_pils_bomb_limit_is_refused_with_its_message() {
        let err = check_size(100_000, 100_000).unwrap_err().to_string();
        assert!(err.contains("10000000000 pixels") && err.contains("decompression bomb"), "{err}");
        check_size(13_000, 13_000).expect("169 M pixels is under twice MAX_IMAGE_PIXELS");
    }
}
