//! YUV 4:2:0 → 8-bit RGB as the reference's decoder converts decoded pictures: FFmpeg's
//! swscale, called by PyAV's `VideoFrame.to_ndarray(format="rgb24")` (transformers'
//! `read_video_pyav`) with its default `SWS_BILINEAR` and the frame's own colour signalling.
//!
//! For a same-size `yuv420p → rgb24` conversion of an even height swscale takes its unscaled
//! `yuv2rgb` path, which on x86 (SSSE3 and later) is the SIMD kernel of
//! `libswscale/x86/yuv_2_rgb.asm`. It works in 16-bit lanes, with coefficients prepared by
//! `ff_yuv2rgb_c_init_tables` (`libswscale/yuv2rgb.c`):
//!
//! * `Y' = ((Y << 3) − y_offset) · y_coeff >> 16`, and for each chroma sample
//!   `U' = (U << 3) − 1024`, `V' = (V << 3) − 1024`;
//! * `R = Y' + (V' · vr >> 16)`, `G = Y' + (U' · ug >> 16) + (V' · vg >> 16)`,
//!   `B = Y' + (U' · ub >> 16)`, each `>> 16` the high half of a signed 16 × 16 product
//!   (`pmulhw`, rounding toward −∞), the sum saturated to 0..=255 (`packuswb`);
//! * each chroma sample serves the 2 × 2 luma samples it covers (no chroma interpolation).
//!
//! The coefficients come from the inverse matrix `ff_yuv2rgb_coeffs[colorspace]` and the range
//! (limited: `cy = 65536 · 255 / 219`, `oy = 16 << 16`; full: the chroma terms scaled by
//! 224 / 255), rounded to 13 fractional bits by `roundToInt16`. Measured with PyAV 18.1.1
//! (FFmpeg 8, libswscale 9.5) on an AMD EPYC: every byte equal on random YUV planes for all
//! five matrices × both ranges, and on every decoded frame of the fixture clips. swscale's C
//! fallback (`yuv2rgb.c`'s tables, used without SSSE3 or on other architectures) rounds
//! differently and is not reproduced; neither is the generic scaler swscale uses for an odd
//! picture height, so such pictures are refused (see `mp4.rs`).

use anyhow::{bail, Result};

/// The YUV → RGB matrix, by H.264's `matrix_coefficients` (ITU-T H.273; the same numbers as
/// FFmpeg's `AVColorSpace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matrix {
    /// BT.601 (`matrix_coefficients` 5 or 6, and swscale's default for 2 "unspecified").
    Bt601,
    /// BT.709 (1).
    Bt709,
    /// FCC (4).
    Fcc,
    /// SMPTE 240M (7).
    Smpte240m,
    /// BT.2020 non-constant luminance (9).
    Bt2020Ncl,
}

impl Matrix {
    /// The matrix swscale applies for a stream's `matrix_coefficients` (`None`: not signalled,
    /// read as unspecified). Codes swscale would treat specially (0 identity / GBR, 8 YCgCo,
    /// 10 BT.2020 constant luminance, 11 and above) are refused.
    pub fn from_h264(code: Option<u8>) -> Result<Self> {
        Ok(match code.unwrap_or(2) {
            1 => Matrix::Bt709,
            2 | 3 | 5 | 6 => Matrix::Bt601,
            4 => Matrix::Fcc,
            7 => Matrix::Smpte240m,
            9 => Matrix::Bt2020Ncl,
            other => bail!(
                "the video signals matrix_coefficients = {other} ({}), whose conversion to RGB is not \
                 reproduced (BT.601, BT.709, FCC, SMPTE 240M and BT.2020 NCL are)",
                match other {
                    0 => "identity / GBR",
                    8 => "YCgCo",
                    10 => "BT.2020 constant luminance",
                    _ => "reserved or newer",
                }
            ),
        })
    }

    /// `ff_yuv2rgb_coeffs[colorspace]`: {crv, cbu, cgu, cgv} in 16 fractional bits.
    fn inverse_table(self) -> [i64; 4] {
        match self {
            Matrix::Bt601 => [104597, 132201, 25675, 53279],
            Matrix::Bt709 => [117489, 138438, 13975, 34925],
            Matrix::Fcc => [104448, 132798, 24759, 53109],
            Matrix::Smpte240m => [117579, 136230, 16907, 35559],
            Matrix::Bt2020Ncl => [110013, 140363, 12277, 42626],
        }
    }
}

/// The 16-bit coefficients of swscale's SIMD `yuv2rgb` for one matrix and range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coefficients {
    pub y: i32,
    pub y_offset: i32,
    pub vr: i32,
    pub ub: i32,
    pub ug: i32,
    pub vg: i32,
}

/// `roundToInt16` of `yuv2rgb.c`: `(f + 2^15) >> 16`, clamped to int16.
fn round_to_i16(f: i64) -> i32 {
    let r = (f + (1 << 15)) >> 16;
    if r < -0x7FFF {
        -0x8000
    } else {
        r.min(0x7FFF) as i32
    }
}

impl Coefficients {
    /// `ff_yuv2rgb_c_init_tables` with swscale's defaults (brightness 0, contrast and
    /// saturation 1.0); C's truncating division, as Rust's.
    pub fn new(matrix: Matrix, full_range: bool) -> Self {
        let [crv, cbu, cgu, cgv] = matrix.inverse_table();
        let (mut crv, mut cbu, mut cgu, mut cgv) = (crv, cbu, -cgu, -cgv);
        let (mut cy, mut oy) = (1i64 << 16, 0i64);
        if full_range {
            crv = crv * 224 / 255;
            cbu = cbu * 224 / 255;
            cgu = cgu * 224 / 255;
            cgv = cgv * 224 / 255;
        } else {
            cy = cy * 255 / 219;
            oy = 16 << 16;
        }
        Coefficients {
            y: round_to_i16(cy * (1 << 13)),
            y_offset: round_to_i16(oy * (1 << 3)),
            vr: round_to_i16(crv * (1 << 13)),
            ub: round_to_i16(cbu * (1 << 13)),
            ug: round_to_i16(cgu * (1 << 13)),
            vg: round_to_i16(cgv * (1 << 13)),
        }
    }
}

/// One YUV 4:2:0 picture, 8 bits per sample, planes with their strides (bytes per row).
pub struct Yuv420<'a> {
    pub width: usize,
    pub height: usize,
    pub y: &'a [u8],
    pub u: &'a [u8],
    pub v: &'a [u8],
    pub y_stride: usize,
    pub uv_stride: usize,
}

/// Converts a picture to interleaved RGB (HWC) as swscale's SIMD `yuv2rgb` does (see the
/// module documentation). The planes must hold `height` rows of `width` luma and
/// `⌈height/2⌉` rows of `⌈width/2⌉` chroma samples at their strides.
pub fn yuv420_to_rgb(p: &Yuv420, c: &Coefficients) -> Vec<u8> {
    let mut out = vec![0u8; p.width * p.height * 3];
    for (row, rgb_row) in out.chunks_exact_mut(p.width * 3).enumerate() {
        let y_row = &p.y[row * p.y_stride..row * p.y_stride + p.width];
        let uv = (row / 2) * p.uv_stride;
        for (col, (px, &y)) in rgb_row.chunks_exact_mut(3).zip(y_row).enumerate() {
            let u = (i32::from(p.u[uv + col / 2]) << 3) - 1024;
            let v = (i32::from(p.v[uv + col / 2]) << 3) - 1024;
            let luma = (((i32::from(y) << 3) - c.y_offset) * c.y) >> 16;
            let r = luma + ((v * c.vr) >> 16);
            let g = luma + ((u * c.ug) >> 16) + ((v * c.vg) >> 16);
            let b = luma + ((u * c.ub) >> 16);
            px[0] = r.clamp(0, 255) as u8;
            px[1] = g.clamp(0, 255) as u8;
            px[2] = b.clamp(0, 255) as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coefficients_are_swscales_sixteen_bit_values() {
        // As ff_yuv2rgb_c_init_tables stores them in yCoeff, yOffset, vrCoeff, ubCoeff,
        // ugCoeff and vgCoeff (libswscale 9.5), checked against PyAV's output.
        let bt601 = Coefficients::new(Matrix::Bt601, false);
        assert_eq!(bt601, Coefficients { y: 9539, y_offset: 128, vr: 13075, ub: 16525, ug: -3209, vg: -6660 });
        let bt709 = Coefficients::new(Matrix::Bt709, false);
        assert_eq!(bt709, Coefficients { y: 9539, y_offset: 128, vr: 14686, ub: 17305, ug: -1747, vg: -4366 });
        let full = Coefficients::new(Matrix::Bt601, true);
        assert_eq!(full, Coefficients { y: 8192, y_offset: 0, vr: 11485, ub: 14516, ug: -2819, vg: -5850 });
    }

    #[test]
    fn limited_range_black_white_and_grey_map_to_their_rgb_levels() {
        let c = Coefficients::new(Matrix::Bt601, false);
        for (y, expected) in [(16u8, 0u8), (235, 255), (126, 128), (0, 0), (255, 255)] {
            let plane = [y; 4];
            let p = Yuv420 { width: 2, height: 2, y: &plane, u: &[128], v: &[128], y_stride: 2, uv_stride: 1 };
            let rgb = yuv420_to_rgb(&p, &c);
            assert!(rgb.iter().all(|&x| x == expected), "Y={y}: got {rgb:?}, expected {expected} everywhere");
        }
    }

    #[test]
    fn one_chroma_sample_serves_its_two_by_two_luma_block_and_an_odd_last_column() {
        // 3×2 luma, 2×1 chroma: columns 0-1 take chroma 0, column 2 takes chroma 1.
        let c = Coefficients::new(Matrix::Bt601, false);
        let p = Yuv420 { width: 3, height: 2, y: &[100; 6], u: &[128, 128], v: &[240, 16], y_stride: 3, uv_stride: 2 };
        let rgb = yuv420_to_rgb(&p, &c);
        for row in 0..2 {
            let px = |x: usize| &rgb[(row * 3 + x) * 3..(row * 3 + x) * 3 + 3];
            assert_eq!(px(0), px(1), "row {row}: columns 0 and 1 share a chroma sample");
            assert!(px(0)[0] > px(2)[0], "row {row}: V 240 is redder than V 16: {:?} vs {:?}", px(0), px(2));
        }
    }

    #[test]
    fn unsupported_matrices_are_refused_by_name() {
        for (code, name) in [(0u8, "GBR"), (8, "YCgCo"), (10, "constant luminance"), (12, "reserved")] {
            let err = Matrix::from_h264(Some(code)).unwrap_err().to_string();
            assert!(err.contains(&format!("= {code}")) && err.contains(name), "{err}");
        }
        assert_eq!(Matrix::from_h264(None).unwrap(), Matrix::Bt601);
    }
}
