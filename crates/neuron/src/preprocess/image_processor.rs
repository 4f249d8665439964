//! Image file → pixel_values, mirroring transformers' `Qwen2VLImageProcessor` (torchvision
//! backend, `transformers/models/qwen2_vl/image_processing_qwen2_vl.py`): read and convert
//! to RGB (`image_file.rs`, as the case's loader does), `smart_resize`,
//! the uint8 bicubic antialiased resize, fused rescale + normalise, and the patch layout in
//! spatial-merge-block order.

use std::path::Path;

use anyhow::{ensure, Result};
use image::DynamicImage;

pub use super::image_file::RgbImage;
use super::image_file::{self, Loader};
use super::resize::resize_bicubic_antialias_u8;
use super::ImageProcessorConfig;
use crate::vision::positions::Grid;

/// Decodes an image file and converts it to RGB as the image processor does when handed the
/// PIL image (`loader = "processor"`): see [`super::image_file`] for formats and loaders.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    image_file::load_rgb_with(path, Loader::Processor)
}

/// The conversion half of [`load_rgb`] for pixels the `image` crate decoded: alpha
/// composited onto white, grayscale replicated, 16-bit samples as PIL reads them.
pub fn to_rgb(decoded: DynamicImage) -> Result<RgbImage> {
    Ok(image_file::convert(image_file::from_dynamic(decoded)?, Loader::Processor))
}

/// `smart_resize`: the size nearest the original whose sides are multiples of `factor`
/// (patch × merge) and whose area lies in [min_pixels, max_pixels], keeping the aspect ratio.
/// Python's `round` (half to even), `floor` and `ceil` on f64, as the reference computes.
/// Returns (height, width).
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize)> {
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    let ratio = h.max(w) / h.min(w);
    ensure!(ratio <= 200.0, "absolute aspect ratio must be smaller than 200, got {ratio}");
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = ((h * w) / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    Ok((h_bar as usize, w_bar as usize))
}

/// An image ready for the tower: its patches and grid.
pub struct ImagePatches {
    /// [patches, C·T·P·P] row-major.
    pub values: Vec<f32>,
    pub grid: Grid,
}

/// The (height, width) an image is resized to: `smart_resize` with factor patch × merge.
pub fn target_size(img: &RgbImage, cfg: &ImageProcessorConfig) -> Result<(usize, usize)> {
    smart_resize(img.height, img.width, cfg.patch_size * cfg.merge_size, cfg.min_pixels(), cfg.max_pixels())
}

/// Resize to (height, width), normalise and patchify one RGB image. The size must tile into
/// whole merge blocks of patches (the reference's reshape fails otherwise; we say why).
pub fn pixel_values_at(
    img: &RgbImage,
    (height, width): (usize, usize),
    cfg: &ImageProcessorConfig,
) -> Result<ImagePatches> {
    let block = cfg.patch_size * cfg.merge_size;
    ensure!(
        height > 0 && width > 0 && height % block == 0 && width % block == 0,
        "the image would be resized to {width}×{height}, which does not tile into {block}-pixel blocks \
         (patch {} × merge {})",
        cfg.patch_size,
        cfg.merge_size
    );
    let resized = resize_bicubic_antialias_u8(&img.data, img.width, img.height, width, height);
    Ok(patchify(&normalise(&resized, cfg), height, width, cfg))
}

/// `rescale_and_normalize` with rescale fused into normalise as the torchvision backend does:
/// (x − mean/rescale) / (std/rescale), in f32. Returns CHW.
fn normalise(hwc: &[u8], cfg: &ImageProcessorConfig) -> Vec<f32> {
    let pixels = hwc.len() / 3;
    let inv = (1.0 / cfg.rescale_factor) as f32;
    let mut chw = vec![0f32; hwc.len()];
    for c in 0..3 {
        let mean = cfg.image_mean[c] as f32 * inv;
        let std = cfg.image_std[c] as f32 * inv;
        for p in 0..pixels {
            chw[c * pixels + p] = (hwc[p * 3 + c] as f32 - mean) / std;
        }
    }
    chw
}

/// `patchify`: [C, H, W] → [grid_h·grid_w, C·T·P·P], patches in spatial-merge-block order,
/// each flattened as (channel, frame, row, col) with the single frame repeated T times.
fn patchify(chw: &[f32], height: usize, width: usize, cfg: &ImageProcessorConfig) -> ImagePatches {
    let (p, m, t) = (cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size);
    let (grid_h, grid_w) = (height / p, width / p);
    let mut values = Vec::with_capacity(grid_h * grid_w * 3 * t * p * p);
    for block_row in 0..grid_h / m {
        for block_col in 0..grid_w / m {
            for in_row in 0..m {
                for in_col in 0..m {
                    let (row, col) = (block_row * m + in_row, block_col * m + in_col);
                    for c in 0..3 {
                        for _frame in 0..t {
                            for y in 0..p {
                                let start = c * height * width + (row * p + y) * width + col * p;
                                values.extend_from_slice(&chw[start..start + p]);
                            }
                        }
                    }
                }
            }
        }
    }
    ImagePatches { values, grid: Grid { t: 1, h: grid_h, w: grid_w } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_keeps_sides_multiples_of_the_factor_within_the_pixel_bounds() {
        // chelsea (451×300) under a 32768-pixel budget becomes 192 wide, 128 high.
        assert_eq!(smart_resize(300, 451, 32, 16384, 32768).unwrap(), (128, 192));
        // A 102×102 image is below the 16384-pixel minimum and is scaled up.
        let (h, w) = smart_resize(102, 102, 32, 16384, 32768).unwrap();
        assert!(h * w >= 16384 && h % 32 == 0 && w % 32 == 0, "{h}×{w}");
    }

    #[test]
    fn smart_resize_rounds_half_to_even_like_python() {
        // 48 / 32 = 1.5 rounds to 2, 80 / 32 = 2.5 rounds to 2 (not 3).
        assert_eq!(smart_resize(48, 80, 32, 1, 1 << 30).unwrap(), (64, 64));
    }

    #[test]
    fn the_pixel_bounds_are_inclusive() {
        // 130×190 rounds to 128×192 = 24576 pixels: exactly the maximum, so it stays (a
        // strict `>` in the reference); `>=` would rescale it from the original size.
        assert_eq!(smart_resize(130, 190, 32, 1, 24576).unwrap(), (128, 192));
        // 130×126 rounds to 128×128 = 16384: exactly the minimum, so it stays too.
        assert_eq!(smart_resize(130, 126, 32, 16384, 1 << 30).unwrap(), (128, 128));
    }

    #[test]
    fn an_image_within_the_bounds_keeps_its_rounded_size() {
        // 100×250 rounds to 96×256 = 24576, inside [16384, 24576]: no rescaling branch runs.
        assert_eq!(smart_resize(100, 250, 32, 16384, 24576).unwrap(), (96, 256));
    }

    #[test]
    fn an_extreme_aspect_ratio_is_an_error() {
        let err = smart_resize(1, 201, 32, 1, 1 << 30).unwrap_err().to_string();
        assert!(err.contains("aspect ratio"), "{err}");
    }
}
