//! The uint8 antialiased bicubic resize that torchvision's
//! `transforms.v2.functional.resize(img, [h, w], interpolation=BICUBIC, antialias=True)` runs
//! on a CPU `uint8` tensor, i.e. PyTorch's `_upsample_bicubic2d_aa` for `kByte`
//! (`aten/src/ATen/native/cpu/UpSampleKernel.cpp`: `upsample_avx_bilinear_bicubic_uint8` in
//! `UpSampleKernelAVXAntialias.h` on AVX2 CPUs, `separable_upsample_generic_Nd_kernel_impl`
//! with `basic_loop_aa_{horizontal,vertical}<uint8_t>` otherwise — both compute the same
//! integers). This is what `Qwen2VLImageProcessor`'s torchvision backend feeds its uint8 CHW
//! tensor through; no float round trip is involved.
//!
//! The algorithm, reproduced bit for bit:
//!
//! * per axis, `scale = in / out` in `f64` (`area_pixel_compute_scale`, align_corners=False,
//!   no scale factor given); an axis whose size is unchanged is not resampled at all, and an
//!   unchanged image is returned as is;
//! * separable: the horizontal pass first, rounded and clamped to an intermediate **uint8**
//!   image, then the vertical pass on it;
//! * per output index `i` (`_compute_indices_min_size_weights_aa`): `support = 2·scale` when
//!   downscaling (`2` when upscaling), `center = scale·(i + 0.5)`,
//!   `xmin = max(trunc(center − support + 0.5), 0)`,
//!   `xsize = min(trunc(center + support + 0.5), in) − xmin` (clamped to
//!   `2·ceil(support) + 1`), weights `filter((xmin + j − center + 0.5) / max(scale, 1))`
//!   with Keys' cubic **a = −0.5** (the antialias filter; torch's plain bicubic uses −0.75),
//!   normalised by their sum, all in `f64`;
//! * weights quantised to **int16** with a per-axis precision `p`
//!   (`_compute_index_ranges_int16_weights`): the smallest `p` such that
//!   `trunc(0.5 + wt_max·2^(p+1)) >= 2^15`, capped at 22, where `wt_max` is the largest
//!   normalised weight of the axis — so the largest weight gets 15 significant bits — and
//!   each weight becomes `trunc(w·2^p ± 0.5)` (rounded half away from zero);
//! * each output sample is `clamp((2^(p−1) + Σ pixel·weight) >> p, 0, 255)` in int32.
//!
//! Why not PIL's `Image.resize(BICUBIC)`? Its filter, support and bounds are the same (torch's
//! code is a port of Pillow-SIMD), but Pillow quantises the weights to int32 with a fixed 22
//! fractional bits, whereas torch uses int16 weights with the adaptive precision above
//! (16 fractional bits for a 2× downscale, 15 near 1×). The coarser weights round
//! differently: on chelsea (451x300) Pillow 13 and torch disagree on 170 of 73 728 bytes at
//! 192x128 and on 53 733 of 387 072 bytes (by up to 2) at 448x288. The reference processor
//! goes through torch, never PIL, so this is the one to mirror.
//!
//! (torch's non-AVX fallback, `separable_upsample_generic_Nd_kernel_impl`, computes the same
//! integers except for outputs one pixel wide, where it disagrees with the AVX kernel; this
//! file follows the AVX kernel, which is what runs on x86 CPUs with AVX2 or AVX-512.)

/// Keys' cubic convolution kernel with `a = -0.5`, as `HelperInterpCubic::aa_filter<double,
/// true>` evaluates it (same operation order, so the same `f64` results).
fn cubic_aa_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

/// The int16 weights of one axis: for output index `i`, input indices
/// `starts[i] .. starts[i] + lens[i]` with weights `weights[i * ksize ..][.. lens[i]]`,
/// fixed point with `precision` fractional bits.
#[derive(Debug)]
struct AxisWeights {
    starts: Vec<usize>,
    lens: Vec<usize>,
    ksize: usize,
    weights: Vec<i16>,
    precision: u32,
}

impl AxisWeights {
    /// Mirrors `HelperInterpCubic::compute_index_ranges_int16_weights` with antialias=true,
    /// align_corners=false and no explicit scale factor.
    fn new(input_size: usize, output_size: usize) -> Self {
        const INTERP_SIZE: f64 = 4.0;
        let scale = input_size as f64 / output_size as f64;
        let support = if scale >= 1.0 { (INTERP_SIZE * 0.5) * scale } else { INTERP_SIZE * 0.5 };
        let ksize = support.ceil() as usize * 2 + 1;
        let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };

        let mut starts = Vec::with_capacity(output_size);
        let mut lens = Vec::with_capacity(output_size);
        let mut weights_f64 = vec![0.0f64; output_size * ksize];
        let mut wt_max = 0.0f64;
        for i in 0..output_size {
            let center = scale * (i as f64 + 0.5);
            // `static_cast<int64_t>` truncates toward zero, then the bounds are clamped.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xsize =
                ((center + support + 0.5) as i64).min(input_size as i64).saturating_sub(xmin).clamp(0, ksize as i64);
            let w = &mut weights_f64[i * ksize..(i + 1) * ksize];
            let mut total = 0.0f64;
            for (j, wj) in w.iter_mut().enumerate().take(xsize as usize) {
                *wj = cubic_aa_filter(((j as i64 + xmin) as f64 - center + 0.5) * invscale);
                total += *wj;
            }
            if total != 0.0 {
                for wj in w.iter_mut().take(xsize as usize) {
                    *wj /= total;
                    wt_max = wt_max.max(*wj);
                }
            }
            starts.push(xmin as usize);
            lens.push(xsize as usize);
        }

        let mut precision = 0u32;
        while precision < 22 {
            let next = (0.5 + wt_max * f64::from(1i32 << (precision + 1))) as i32;
            if next >= 1 << 15 {
                break;
            }
            precision += 1;
        }
        let unit = f64::from(1i32 << precision);
        let weights = weights_f64
            .iter()
            .map(|&w| {
                let v = w * unit;
                let rounded = if v < 0.0 { (-0.5 + v) as i32 } else { (0.5 + v) as i32 };
                rounded as i16
            })
            .collect();
        Self { starts, lens, ksize, weights, precision }
    }

    /// The taps of output index `i`: first input index and int16 weights.
    fn taps(&self, i: usize) -> (usize, &[i16]) {
        let start = i * self.ksize;
        (self.starts[i], &self.weights[start..start + self.lens[i]])
    }

    /// `clamp((2^(p-1) + acc) >> p, 0, 255)`, with `acc` already holding the rounding term.
    fn finish(&self, acc: i32) -> u8 {
        (acc >> self.precision).clamp(0, 255) as u8
    }

    fn rounding(&self) -> i32 {
        1i32 << (self.precision - 1)
    }
}

const CHANNELS: usize = 3;

/// Horizontal pass: `width` → `new_width`, every row, into a uint8 image.
fn resample_horizontal(src: &[u8], width: usize, height: usize, new_width: usize) -> Vec<u8> {
    let axis = AxisWeights::new(width, new_width);
    let mut out = vec![0u8; new_width * height * CHANNELS];
    for (row_in, row_out) in src.chunks_exact(width * CHANNELS).zip(out.chunks_exact_mut(new_width * CHANNELS)) {
        for (x, px_out) in row_out.chunks_exact_mut(CHANNELS).enumerate() {
            let (xmin, w) = axis.taps(x);
            let mut acc = [axis.rounding(); CHANNELS];
            for (j, &wj) in w.iter().enumerate() {
                let px = &row_in[(xmin + j) * CHANNELS..(xmin + j + 1) * CHANNELS];
                for c in 0..CHANNELS {
                    // int32 lanes, as `_mm256_madd_epi16` / `int` accumulate them.
                    acc[c] = acc[c].wrapping_add(i32::from(px[c]) * i32::from(wj));
                }
            }
            for c in 0..CHANNELS {
                px_out[c] = axis.finish(acc[c]);
            }
        }
    }
    out
}

/// Vertical pass: `height` → `new_height`, every column, into a uint8 image.
fn resample_vertical(src: &[u8], width: usize, height: usize, new_height: usize) -> Vec<u8> {
    let axis = AxisWeights::new(height, new_height);
    let stride = width * CHANNELS;
    let mut out = vec![0u8; stride * new_height];
    let mut acc = vec![0i32; stride];
    for (y, row_out) in out.chunks_exact_mut(stride).enumerate() {
        let (ymin, w) = axis.taps(y);
        acc.fill(axis.rounding());
        for (j, &wj) in w.iter().enumerate() {
            let row_in = &src[(ymin + j) * stride..(ymin + j + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(row_in) {
                *a = a.wrapping_add(i32::from(p) * i32::from(wj));
            }
        }
        for (o, &a) in row_out.iter_mut().zip(&acc) {
            *o = axis.finish(a);
        }
    }
    out
}

/// Resizes an interleaved RGB (HWC, u8) image of `width`×`height` to `new_width`×`new_height`
/// exactly as torchvision's `resize(..., interpolation=BICUBIC, antialias=True)` does on the
/// equivalent uint8 CHW CPU tensor. Returns the HWC u8 pixels of the new size (3 channels).
///
/// (For a 1x1 output torch 2.15's AVX kernel trips an internal assert on a 3-channel
/// tensor; this returns what it computes for the same channels of a 4-channel tensor.)
///
/// # Panics
///
/// If `src.len() != width * height * 3` or if any size is zero.
pub fn resize_bicubic_antialias_u8(
    src: &[u8],
    width: usize,
    height: usize,
    new_width: usize,
    new_height: usize,
) -> Vec<u8> {
    assert_eq!(
        src.len(),
        width * height * CHANNELS,
        "resize_bicubic_antialias_u8: {} bytes given for a {width}x{height} RGB image",
        src.len()
    );
    assert!(
        width > 0 && height > 0 && new_width > 0 && new_height > 0,
        "resize_bicubic_antialias_u8: sizes must be positive, got {width}x{height} -> \
         {new_width}x{new_height}"
    );
    // torchvision returns the input tensor itself when the size is unchanged; torch skips
    // the pass of each axis whose size is unchanged.
    let horizontal = if new_width != width { Some(resample_horizontal(src, width, height, new_width)) } else { None };
    let after_h = horizontal.as_deref().unwrap_or(src);
    if new_height != height {
        resample_vertical(after_h, new_width, height, new_height)
    } else {
        horizontal.unwrap_or_else(|| src.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compares byte for byte; on failure reports the count and the first differences with
    /// their pixel position and channel.
    fn assert_same_pixels(actual: &[u8], expected: &[u8], width: usize, what: &str) {
        assert_eq!(actual.len(), expected.len(), "{what}: output length");
        let diffs: Vec<String> = actual
            .iter()
            .zip(expected)
            .enumerate()
            .filter(|(_, (a, e))| a != e)
            .map(|(i, (a, e))| {
                let (px, c) = (i / 3, i % 3);
                format!(
                    "(x={}, y={}, c={c}): got {a}, expected {e} ({:+})",
                    px % width,
                    px / width,
                    i32::from(*a) - i32::from(*e)
                )
            })
            .collect();
        assert!(
            diffs.is_empty(),
            "{what}: {} of {} bytes differ; first: {}",
            diffs.len(),
            expected.len(),
            diffs.iter().take(8).cloned().collect::<Vec<_>>().join("; ")
        );
    }

    /// 7x5 RGB noise, HWC: numpy `default_rng(7).integers(0, 256, (5, 7, 3), dtype=uint8)`.
    const NOISE_7X5: [u8; 105] = [
        139, 74, 229, 241, 169, 65, 6, 160, 149, 106, 38, 175, 188, 205, 175, 229, 98, 249, 10, 148, 95, 86, 147, 198,
        66, 39, 106, 213, 171, 45, 167, 57, 69, 81, 55, 14, 153, 178, 215, 76, 52, 39, 250, 72, 215, 50, 161, 223, 112,
        172, 161, 233, 38, 17, 89, 1, 221, 6, 242, 127, 143, 6, 60, 210, 94, 25, 166, 33, 249, 189, 12, 204, 33, 57,
        124, 30, 199, 149, 202, 119, 72, 220, 3, 209, 122, 136, 147, 77, 133, 82, 115, 87, 162, 230, 70, 71, 240, 62,
        47, 184, 31, 34, 63, 65, 146,
    ];

    /// torch 2.15.0 / torchvision 0.29.2 on CPU (AVX-512 machine): `NOISE_7X5` resized to 3x4.
    const NOISE_7X5_TO_3X4: [u8; 36] = [
        142, 124, 135, 123, 117, 142, 138, 132, 165, 113, 122, 163, 157, 84, 72, 87, 103, 111, 177, 79, 182, 99, 83,
        149, 133, 100, 132, 118, 107, 129, 174, 75, 100, 161, 56, 87,
    ];

    /// torch 2.15.0 / torchvision 0.29.2 on CPU (AVX-512 machine): `NOISE_7X5` resized to 11x9.
    const NOISE_7X5_TO_11X9: [u8; 297] = [
        136, 60, 244, 204, 116, 155, 244, 184, 61, 45, 175, 130, 2, 109, 173, 101, 36, 184, 167, 161, 183, 218, 200,
        207, 242, 97, 254, 102, 123, 166, 0, 161, 89, 114, 94, 230, 157, 108, 156, 189, 133, 69, 93, 164, 100, 73, 121,
        131, 121, 44, 148, 144, 123, 124, 178, 163, 153, 217, 121, 242, 107, 119, 153, 17, 123, 67, 83, 152, 206, 76,
        96, 160, 87, 48, 91, 176, 147, 55, 199, 141, 58, 159, 56, 80, 105, 52, 24, 104, 95, 65, 164, 168, 216, 113,
        112, 128, 62, 53, 30, 159, 121, 217, 100, 101, 194, 45, 94, 152, 142, 169, 104, 206, 146, 60, 211, 49, 33, 125,
        8, 67, 68, 60, 123, 72, 213, 179, 92, 117, 99, 107, 17, 26, 255, 66, 214, 164, 108, 222, 46, 165, 220, 84, 182,
        186, 163, 130, 100, 233, 38, 17, 148, 0, 154, 56, 60, 216, 5, 237, 136, 82, 117, 83, 153, 0, 55, 246, 77, 88,
        191, 82, 167, 119, 87, 255, 148, 81, 221, 145, 62, 147, 109, 47, 79, 57, 95, 161, 50, 145, 182, 103, 185, 98,
        168, 77, 121, 208, 0, 154, 204, 102, 11, 185, 74, 115, 164, 31, 243, 191, 11, 222, 139, 19, 174, 40, 59, 125,
        24, 160, 135, 81, 189, 119, 199, 116, 65, 219, 44, 147, 211, 5, 221, 148, 127, 105, 127, 117, 114, 106, 97,
        132, 128, 69, 172, 150, 58, 151, 169, 67, 89, 177, 97, 77, 186, 97, 61, 198, 54, 39, 146, 46, 115, 102, 49,
        178, 118, 139, 164, 94, 142, 116, 70, 138, 70, 89, 106, 143, 157, 83, 136, 246, 71, 67, 255, 58, 45, 244, 42,
        32, 192, 23, 27, 101, 49, 95, 40, 72, 149,
    ];

    #[test]
    fn a_constant_image_stays_constant_at_every_size() {
        for &(w, h) in &[(1usize, 1usize), (7, 5), (37, 53), (64, 64)] {
            let src: Vec<u8> = [17u8, 128, 250].repeat(w * h);
            for &(nw, nh) in &[(1usize, 1usize), (3, 4), (w, h), (11, 9), (w * 3, h), (5, h * 2)] {
                let out = resize_bicubic_antialias_u8(&src, w, h, nw, nh);
                let expected: Vec<u8> = [17u8, 128, 250].repeat(nw * nh);
                assert_same_pixels(&out, &expected, nw, &format!("constant {w}x{h} -> {nw}x{nh}"));
            }
        }
    }

    #[test]
    fn an_unchanged_size_returns_the_input() {
        let out = resize_bicubic_antialias_u8(&NOISE_7X5, 7, 5, 7, 5);
        assert_same_pixels(&out, &NOISE_7X5, 7, "7x5 -> 7x5");
    }

    #[test]
    fn halving_a_row_of_four_pixels_matches_the_hand_computed_weights() {
        // 4x1 -> 2x1: scale 2, support 4. Output 0 (center 1) reads inputs 0..4 with weights
        // cubic((j - 0.5) / 2) = cubic(-0.25, 0.25, 0.75, 1.25) =
        // [0.8671875, 0.8671875, 0.2265625, -0.0703125], sum 1.890625, normalised
        // [0.458678, 0.458678, 0.119835, -0.037190]; output 1 is the mirror image.
        // wt_max = 0.458678: round(wt_max * 2^16) = 30060 < 2^15 but round(wt_max * 2^17)
        // >= 2^15, so precision 16 and int16 weights [30060, 30060, 7853, -2437].
        let axis = AxisWeights::new(4, 2);
        assert_eq!(axis.precision, 16, "precision");
        assert_eq!(axis.taps(0), (0, &[30060i16, 30060, 7853, -2437][..]), "taps of output 0");
        assert_eq!(axis.taps(1), (0, &[-2437i16, 7853, 30060, 30060][..]), "taps of output 1");
        // Inputs 0, 100, 200, 40 (grey):
        // (32768 + 100*30060 + 200*7853 - 40*2437) >> 16 = 4511888 >> 16 = 68, and
        // (32768 + 100*7853 + 200*30060 + 40*30060) >> 16 = 8032468 >> 16 = 122;
        // torch gives [68, 68, 68, 122, 122, 122].
        let src = [0u8, 0, 0, 100, 100, 100, 200, 200, 200, 40, 40, 40];
        let out = resize_bicubic_antialias_u8(&src, 4, 1, 2, 1);
        assert_same_pixels(&out, &[68, 68, 68, 122, 122, 122], 2, "4x1 -> 2x1");
    }

    #[test]
    fn overshoot_is_clamped_to_the_uint8_range() {
        // A black/white edge upscaled 3x: the negative lobes undershoot to about -9 and -19
        // at x = 5, 6 and overshoot to about 274 and 264 at x = 11, 12 (torch's float path);
        // the uint8 path clamps them. Expected row from torch's uint8 path.
        let mut src = Vec::new();
        for x in 0..6 {
            let v = if x < 3 { 0u8 } else { 255 };
            src.extend_from_slice(&[v, v, v]);
        }
        let row = [0u8, 0, 0, 0, 0, 0, 0, 0, 76, 179, 255, 255, 255, 255, 255, 255, 255, 255];
        let expected: Vec<u8> = row.iter().flat_map(|&v| [v, v, v]).collect();
        let out = resize_bicubic_antialias_u8(&src, 6, 1, 18, 1);
        assert_same_pixels(&out, &expected, 18, "edge 6x1 -> 18x1");
    }

    #[test]
    fn noise_7x5_matches_torch_byte_for_byte() {
        let out = resize_bicubic_antialias_u8(&NOISE_7X5, 7, 5, 3, 4);
        assert_same_pixels(&out, &NOISE_7X5_TO_3X4, 3, "7x5 -> 3x4 (downscale)");
        let out = resize_bicubic_antialias_u8(&NOISE_7X5, 7, 5, 11, 9);
        assert_same_pixels(&out, &NOISE_7X5_TO_11X9, 11, "7x5 -> 11x9 (upscale)");
    }
}
