//! MP4 files with H.264 video → [`Video`], as transformers' `read_video_pyav` sees them.
//!
//! - Demuxing: `re_mp4` (Rerun's MP4 reader). The first video track is read, as PyAV's
//!   `container.streams.video[0]`. Its frame count is the sample count (`stream.frames`) and
//!   its frame rate FFmpeg's `avg_frame_rate`: timescale × samples / Σ durations, reduced by
//!   `av_reduce` to at most `INT_MAX` (then `float(average_rate)`).
//! - Decoding: OpenH264 (Cisco's decoder, compiled from source). H.264 decoding is exact by
//!   the standard, so its YUV planes equal FFmpeg's; pictures come out in display order, and
//!   the i-th picture is frame i.
//! - Colour: [`super::colour`], swscale's conversion for the SPS's `matrix_coefficients` and
//!   `video_full_range_flag`.
//!
//! Refused, by name: other containers (WebM / Matroska, AVI, MPEG-TS, Ogg, FLV, …), other
//! codecs in MP4 (HEVC, AV1, VP8 / VP9, MPEG-4 Part 2 `mp4v`, `avc3`, …), H.264 that is not
//! 8-bit 4:2:0 progressive, an odd picture height (swscale's generic scaler, not reproduced),
//! a truncated file (no index, or samples past its end), a track without frames, and anything
//! beyond [`VideoLimits`]. Edit lists are not applied (PyAV's frame count ignores them too).

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use h264_reader::avcc::AvcDecoderConfigurationRecord;
use h264_reader::nal::sps::{ChromaFormat, FrameMbsFlags, SeqParameterSet};
use h264_reader::nal::{Nal, RefNal};
use openh264::decoder::{DecodedYUV, Decoder, DecoderConfig, Flush};
use openh264::formats::YUVSource;
use openh264::OpenH264API;
use re_mp4::{Mp4, StsdBoxContent};

use super::colour::{yuv420_to_rgb, Coefficients, Matrix, Yuv420};
use super::processor::VideoProcessorConfig;
use super::{check_fps, wanted_indices, Video, VideoLimits};

/// Reads an MP4 file's first video track (H.264). With `sampling`, every frame is decoded
/// (inter prediction needs them) but only the frames that processor samples are converted to
/// RGB and held; without it, all frames are.
pub fn load_mp4(path: &Path, sampling: Option<&VideoProcessorConfig>, limits: &VideoLimits) -> Result<Video> {
    let size = std::fs::metadata(path).with_context(|| format!("{}: cannot read the video", path.display()))?.len();
    ensure!(
        size <= limits.max_file_bytes,
        "{}: the file is {size} bytes, more than the limit of {} (VideoLimits::max_file_bytes)",
        path.display(),
        limits.max_file_bytes
    );
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read the video", path.display()))?;
    read_mp4(&bytes, sampling, limits).with_context(|| format!("{}", path.display()))
}

/// [`load_mp4`] on the bytes of a file.
pub fn read_mp4(bytes: &[u8], sampling: Option<&VideoProcessorConfig>, limits: &VideoLimits) -> Result<Video> {
    ensure!(!bytes.is_empty(), "the file is empty (0 bytes): not a video");
    check_container(bytes)?;
    check_sample_counts(bytes, limits)?;
    let mp4 = parse(bytes)?;
    // The first track whose handler is video ('vide'), in file order, as PyAV's streams.video[0].
    let track = mp4
        .moov
        .traks
        .iter()
        .filter(|trak| trak.mdia.hdlr.handler_type.to_string().trim() == "vide")
        .find_map(|trak| mp4.tracks().get(&trak.tkhd.track_id))
        .context("the MP4 has no video track")?;
    let stsd = &track.trak(&mp4).mdia.minf.stbl.stsd.contents;
    let avcc = match stsd {
        StsdBoxContent::Avc1(avc1) => &avc1.avcc,
        other => bail!("{}; only H.264 ('avc1') video is decoded", codec_name(other)),
    };
    let stream = Stream::from_avcc(&avcc.raw)?;
    let (width, height) = stream.size;
    limits.check_frame_size(width, height)?;
    ensure!(
        height % 2 == 0,
        "the pictures are {width}×{height}: an odd height is converted to RGB by swscale's generic scaler, \
         which is not reproduced"
    );

    let total_frames = track.samples.len();
    ensure!(total_frames > 0, "the video track has no frames (no samples)");
    limits.check_frames(total_frames)?;
    let stts = &track.trak(&mp4).mdia.minf.stbl.stts.entries;
    let stts: Vec<(u32, u32)> = stts.iter().map(|e| (e.sample_count, e.sample_delta)).collect();
    let fps = average_fps(track.timescale, &stts)?;
    let indices = wanted_indices(sampling, total_frames, fps)?;
    limits.check_held(indices.len(), width, height)?;

    let frames = decode(bytes, &track.samples, &stream, &indices)?;
    Ok(Video { width, height, fps, total_frames, indices, frames })
}

/// Refuses what is not ISO base media (MP4 / QuickTime), naming the container when known.
fn check_container(b: &[u8]) -> Result<()> {
    let at = |i: usize, s: &[u8]| b.len() >= i + s.len() && &b[i..i + s.len()] == s;
    let name = if at(0, &[0x1A, 0x45, 0xDF, 0xA3]) {
        Some("a Matroska / WebM file")
    } else if at(0, b"RIFF") && at(8, b"AVI ") {
        Some("an AVI file")
    } else if b[0] == 0x47 && b.len() > 188 && b[188] == 0x47 {
        Some("an MPEG transport stream")
    } else if at(0, &[0, 0, 1, 0xBA]) {
        Some("an MPEG program stream")
    } else if at(0, b"OggS") {
        Some("an Ogg file")
    } else if at(0, b"FLV") {
        Some("an FLV file")
    } else if at(0, b"GIF8") {
        Some("a GIF image")
    } else if at(0, &[0, 0, 0, 1]) || at(0, &[0, 0, 1]) {
        Some("a raw H.264 / Annex B stream without a container")
    } else {
        None
    };
    if let Some(name) = name {
        bail!("this is {name}; only MP4 files (H.264 video) are read");
    }
    let boxes: [&[u8]; 7] = [b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"];
    ensure!(
        b.len() >= 8 && boxes.iter().any(|t| at(4, t)),
        "not a video in a known container (only MP4 files with H.264 video are read; the content decides, not the \
         name)"
    );
    Ok(())
}

/// The top-level box walk re_mp4 does not guard: a sample table (`stsz`) may declare up to
/// 2^32 samples of one fixed size without holding them, and re_mp4 would build one entry per
/// sample. Refuses more than `limits.max_frames` before parsing.
fn check_sample_counts(bytes: &[u8], limits: &VideoLimits) -> Result<()> {
    fn walk(b: &[u8], depth: usize, limits: &VideoLimits) -> Result<()> {
        let mut pos = 0usize;
        while pos + 8 <= b.len() {
            let size32 = u32::from_be_bytes([b[pos], b[pos + 1], b[pos + 2], b[pos + 3]]) as usize;
            let kind = &b[pos + 4..pos + 8];
            let (header, size) = match size32 {
                0 => (8, b.len() - pos),
                1 if pos + 16 <= b.len() => {
                    let s = u64::from_be_bytes(b[pos + 8..pos + 16].try_into().expect("8 bytes"));
                    (16, usize::try_from(s).unwrap_or(usize::MAX))
                }
                s => (8, s),
            };
            if size < header || size > b.len() - pos {
                return Ok(()); // a truncated or malformed box: re_mp4 reports it
            }
            let body = &b[pos + header..pos + size];
            match kind {
                b"moov" | b"trak" | b"mdia" | b"minf" | b"stbl" if depth < 8 => walk(body, depth + 1, limits)?,
                b"stsz" if body.len() >= 12 => {
                    let count = u32::from_be_bytes([body[8], body[9], body[10], body[11]]) as usize;
                    limits.check_frames(count)?;
                }
                _ => {}
            }
            pos += size;
        }
        Ok(())
    }
    walk(bytes, 0, limits)
}

/// re_mp4's parse, its panics on malformed tables (out-of-range chunk indices) turned into
/// errors.
fn parse(bytes: &[u8]) -> Result<Mp4> {
    let parsed = std::panic::catch_unwind(|| Mp4::read_bytes(bytes))
        .map_err(|_| anyhow!("the MP4's sample tables are inconsistent (the demuxer stopped on them)"))?;
    parsed.map_err(|e| {
        let text = e.to_string();
        if text.contains("larger size") {
            anyhow!("the file is truncated: one of its boxes runs past the end of the file ({text})")
        } else if text.contains("moov") {
            anyhow!("not a complete MP4: it has no index ('moov' box); the file may be truncated ({text})")
        } else {
            anyhow!("not a readable MP4 (the file may be truncated): {text}")
        }
    })
}

/// The codec of a sample entry, for refusals.
fn codec_name(content: &StsdBoxContent) -> String {
    match content {
        StsdBoxContent::Avc1(_) => "H.264 ('avc1')".into(),
        StsdBoxContent::Hvc1(_) | StsdBoxContent::Hev1(_) => "the video is H.265 / HEVC".into(),
        StsdBoxContent::Av01(_) => "the video is AV1".into(),
        StsdBoxContent::Vp08(_) => "the video is VP8".into(),
        StsdBoxContent::Vp09(_) => "the video is VP9".into(),
        StsdBoxContent::Mp4a(_) => "the video track holds AAC audio".into(),
        StsdBoxContent::Tx3g(_) => "the video track holds text".into(),
        StsdBoxContent::Unknown(fourcc) => {
            let code = fourcc.to_string();
            let known = match code.trim() {
                "mp4v" => " (MPEG-4 Part 2 video)",
                "avc3" => " (H.264 with in-band parameter sets)",
                "jpeg" | "mjpa" | "mjpb" => " (Motion JPEG)",
                "apcn" | "apch" | "apcs" | "apco" | "ap4h" => " (Apple ProRes)",
                "s263" | "h263" => " (H.263)",
                _ => "",
            };
            format!("the video codec is '{code}'{known}")
        }
    }
}

/// FFmpeg's `avg_frame_rate` for an MP4 track: `mov_read_stts` sums the time-to-sample table
/// (samples and their durations), then `av_reduce(timescale · samples, duration, INT_MAX)`;
/// PyAV's `float(average_rate)`.
/// `stts`: (sample count, sample duration) runs.
fn average_fps(timescale: u64, stts: &[(u32, u32)]) -> Result<f64> {
    let count: u128 = stts.iter().map(|&(n, _)| u128::from(n)).sum();
    let duration: u128 = stts.iter().map(|&(n, d)| u128::from(n) * u128::from(d)).sum();
    ensure!(duration > 0, "the video track's frame durations sum to 0: it has no frame rate");
    ensure!(timescale > 0, "the video track's timescale is 0: it has no frame rate");
    let (num, den) = av_reduce(u128::from(timescale) * count, duration, i32::MAX as u128);
    let fps = num as f64 / den as f64;
    check_fps(fps)?;
    Ok(fps)
}

/// `av_reduce(num, den, max)` of libavutil for non-negative values: the fraction in lowest
/// terms if both fit under `max`, else its best continued-fraction approximation that does.
pub fn av_reduce(num: u128, den: u128, max: u128) -> (u128, u128) {
    fn gcd(a: u128, b: u128) -> u128 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let g = gcd(num, den);
    let (mut num, mut den) = (num.checked_div(g).unwrap_or(num), den.checked_div(g).unwrap_or(den));
    let (mut a0, mut a1) = ((0u128, 1u128), (1u128, 0u128));
    if num <= max && den <= max {
        return (num, den);
    }
    while den != 0 {
        let x = num / den;
        let next_den = num - den * x;
        let (a2n, a2d) = (x * a1.0 + a0.0, x * a1.1 + a0.1);
        if a2n > max || a2d > max {
            let mut x = x;
            if let Some(bound) = (max - a0.0).checked_div(a1.0) {
                x = bound;
            }
            if let Some(bound) = (max - a0.1).checked_div(a1.1) {
                x = x.min(bound);
            }
            if den * (2 * x * a1.1 + a0.1) > num * a1.1 {
                a1 = (x * a1.0 + a0.0, x * a1.1 + a0.1);
            }
            break;
        }
        a0 = a1;
        a1 = (a2n, a2d);
        num = den;
        den = next_den;
    }
    a1
}

/// The H.264 stream's parameter sets and what is known of its pictures.
struct Stream {
    /// SPS and PPS NAL units in Annex B form (start codes), fed to the decoder first.
    parameter_sets: Vec<u8>,
    /// Bytes of each NAL unit's length prefix in the samples.
    length_size: usize,
    /// (width, height) after cropping.
    size: (usize, usize),
    colour: Coefficients,
}

impl Stream {
    fn from_avcc(raw: &[u8]) -> Result<Self> {
        // re_mp4 keeps the box with its 8-byte header; the record starts after it.
        let body = if raw.len() >= 8 && &raw[4..8] == b"avcC" { &raw[8..] } else { raw };
        let record = AvcDecoderConfigurationRecord::try_from(body)
            .map_err(|e| anyhow!("the H.264 configuration record ('avcC') is malformed: {e:?}"))?;
        let mut parameter_sets = Vec::new();
        let mut sps_seen: Option<SeqParameterSet> = None;
        for sps in record.sequence_parameter_sets() {
            let sps = sps.map_err(|e| anyhow!("the 'avcC' holds a malformed SPS: {e:?}"))?;
            let parsed = SeqParameterSet::from_bits(RefNal::new(sps, &[], true).rbsp_bits())
                .map_err(|e| anyhow!("cannot read the H.264 sequence parameter set: {e:?}"))?;
            sps_seen.get_or_insert(parsed);
            parameter_sets.extend_from_slice(&[0, 0, 0, 1]);
            parameter_sets.extend_from_slice(sps);
        }
        for pps in record.picture_parameter_sets() {
            let pps = pps.map_err(|e| anyhow!("the 'avcC' holds a malformed PPS: {e:?}"))?;
            parameter_sets.extend_from_slice(&[0, 0, 0, 1]);
            parameter_sets.extend_from_slice(pps);
        }
        let sps = sps_seen.context("the H.264 configuration record ('avcC') holds no sequence parameter set")?;
        match sps.chroma_info.chroma_format {
            ChromaFormat::YUV420 => {}
            other => bail!("the H.264 video is {other:?}; only 4:2:0 is decoded"),
        }
        ensure!(
            sps.chroma_info.bit_depth_luma_minus8 == 0 && sps.chroma_info.bit_depth_chroma_minus8 == 0,
            "the H.264 video has {}-bit samples; only 8-bit video is decoded",
            8 + sps.chroma_info.bit_depth_luma_minus8
        );
        ensure!(
            matches!(sps.frame_mbs_flags, FrameMbsFlags::Frames),
            "the H.264 video is interlaced (field-coded); only progressive video is decoded"
        );
        let (w, h) = sps.pixel_dimensions().map_err(|e| anyhow!("the H.264 picture size is invalid: {e:?}"))?;
        let signal = sps.vui_parameters.as_ref().and_then(|v| v.video_signal_type.as_ref());
        let matrix =
            Matrix::from_h264(signal.and_then(|s| s.colour_description.as_ref()).map(|c| c.matrix_coefficients))?;
        let full_range = signal.is_some_and(|s| s.video_full_range_flag);
        Ok(Stream {
            parameter_sets,
            length_size: usize::from(record.length_size_minus_one()) + 1,
            size: (w as usize, h as usize),
            colour: Coefficients::new(matrix, full_range),
        })
    }

    /// One MP4 sample (length-prefixed NAL units) in Annex B form.
    fn annex_b(&self, sample: &[u8], out: &mut Vec<u8>) -> Result<()> {
        out.clear();
        let mut pos = 0;
        while pos < sample.len() {
            ensure!(pos + self.length_size <= sample.len(), "a NAL unit's length prefix is cut off");
            let len = sample[pos..pos + self.length_size].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            pos += self.length_size;
            ensure!(len <= sample.len() - pos, "a NAL unit of {len} bytes runs past the end of its sample");
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(&sample[pos..pos + len]);
            pos += len;
        }
        Ok(())
    }
}

/// Decodes the track's samples in order and returns the RGB frames at `indices` (pictures in
/// display order, counted from 0), stopping after the last one needed.
fn decode(bytes: &[u8], samples: &[re_mp4::Sample], stream: &Stream, indices: &[usize]) -> Result<Vec<Vec<u8>>> {
    let wanted: BTreeSet<usize> = indices.iter().copied().collect();
    let last = *wanted.last().expect("at least one frame is sampled");
    let config = DecoderConfig::new().flush_after_decode(Flush::NoFlush);
    let mut decoder = Decoder::with_api_config(OpenH264API::from_source(), config)
        .map_err(|e| anyhow!("cannot start the H.264 decoder: {e}"))?;
    decoder.decode(&stream.parameter_sets).map_err(|e| anyhow!("the H.264 parameter sets do not decode: {e}"))?;

    let mut kept: Vec<(usize, Vec<u8>)> = Vec::with_capacity(wanted.len());
    let mut next = 0usize; // display index of the next picture out of the decoder
    let mut keep = |yuv: &DecodedYUV, next: &mut usize| -> Result<()> {
        if wanted.contains(next) {
            kept.push((*next, to_rgb(yuv, stream).with_context(|| format!("frame {next}"))?));
        }
        *next += 1;
        Ok(())
    };
    let mut annex_b = Vec::new();
    for (n, sample) in samples.iter().enumerate() {
        if next > last {
            break;
        }
        let end = sample.offset.checked_add(sample.size).filter(|&e| e <= bytes.len() as u64).with_context(|| {
            format!(
                "the file is truncated: sample {n} of {} lies at bytes {}..{}, past its end ({} bytes)",
                samples.len(),
                sample.offset,
                sample.offset.saturating_add(sample.size),
                bytes.len()
            )
        })?;
        let data = &bytes[sample.offset as usize..end as usize];
        stream.annex_b(data, &mut annex_b).with_context(|| format!("sample {n} is malformed"))?;
        match decoder.decode(&annex_b) {
            Ok(Some(yuv)) => keep(&yuv, &mut next)?,
            Ok(None) => {}
            Err(e) => bail!("H.264 decoding failed at sample {n} of {}: {e}", samples.len()),
        }
    }
    if next <= last {
        for yuv in decoder.flush_remaining().map_err(|e| anyhow!("H.264 decoding failed while flushing: {e}"))? {
            keep(&yuv, &mut next)?;
        }
    }
    ensure!(
        next > last,
        "the decoder gave {next} pictures for {} samples; frame {last} is needed (the stream is damaged or uses \
         features OpenH264 does not decode)",
        samples.len()
    );
    // Back in the order of `indices` (repeats included).
    indices
        .iter()
        .map(|i| {
            kept.iter().find(|(k, _)| k == i).map(|(_, rgb)| rgb.clone()).context("a sampled frame was not decoded")
        })
        .collect()
}

fn to_rgb(yuv: &DecodedYUV, stream: &Stream) -> Result<Vec<u8>> {
    let (width, height) = yuv.dimensions();
    ensure!(
        (width, height) == stream.size,
        "the decoder gave a {width}×{height} picture, but the stream declares {}×{}",
        stream.size.0,
        stream.size.1
    );
    let (y_stride, uv_stride, _) = yuv.strides();
    let picture = Yuv420 { width, height, y: yuv.y(), u: yuv.u(), v: yuv.v(), y_stride, uv_stride };
    Ok(yuv420_to_rgb(&picture, &stream.colour))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn av_reduce_keeps_small_fractions_and_approximates_large_ones() {
        assert_eq!(av_reduce(12288 * 50, 25600, i32::MAX as u128), (24, 1));
        assert_eq!(av_reduce(30000 * 45, 45045, i32::MAX as u128), (30000, 1001));
        // 9e9 / 1e8 = 90 exactly after the gcd; a fraction whose terms stay over the bound is
        // approximated by its convergents: 3141592653589 / 1e12 ≈ π.
        assert_eq!(av_reduce(9_000_000_000, 100_000_000, 1000), (90, 1));
        let (n, d) = av_reduce(3_141_592_653_589, 1_000_000_000_000, 1000);
        assert_eq!((n, d), (355, 113));
    }

    #[test]
    fn containers_other_than_mp4_are_refused_by_name() {
        let webm = [0x1A, 0x45, 0xDF, 0xA3, 0, 0, 0, 0];
        assert!(check_container(&webm).unwrap_err().to_string().contains("Matroska / WebM"));
        let mut avi = b"RIFF\0\0\0\0AVI LIST".to_vec();
        avi.resize(64, 0);
        assert!(check_container(&avi).unwrap_err().to_string().contains("AVI"));
        let text = b"hello, this is not a video at all";
        assert!(check_container(text).unwrap_err().to_string().contains("not a video in a known container"));
    }

    #[test]
    fn a_sample_table_declaring_too_many_samples_is_refused_before_parsing() {
        // moov > trak > mdia > minf > stbl > stsz with a fixed sample size and 2^32 − 1 samples.
        fn boxed(kind: &[u8], body: &[u8]) -> Vec<u8> {
            let mut b = ((body.len() + 8) as u32).to_be_bytes().to_vec();
            b.extend_from_slice(kind);
            b.extend_from_slice(body);
            b
        }
        let stsz = boxed(b"stsz", &[0, 0, 0, 0, 0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF]);
        let moov = boxed(b"moov", &boxed(b"trak", &boxed(b"mdia", &boxed(b"minf", &boxed(b"stbl", &stsz)))));
        let err = check_sample_counts(&moov, &VideoLimits::default()).unwrap_err().to_string();
        assert!(err.contains("4294967295 frames") && err.contains("max_frames"), "{err}");
    }
}
