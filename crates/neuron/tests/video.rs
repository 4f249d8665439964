//! Videos: decoding (MP4 / H.264, folders of PNG frames), the Qwen3-VL video processor and the
//! prompt text of each video, against transformers 5.23 with PyAV 18.1.1 (FFmpeg 8) as the
//! decoder. The reference figures below were computed by running the reference on the fixture
//! clips of `fixtures/videos/` (written by `script/make_videos.py`); they are CRC-32s of the
//! reference's bytes, so a test names the frame or temporal patch that differs.

use std::path::{Path, PathBuf};

use neuron::preprocess::image_file::RgbImage;
use neuron::preprocess::video::processor::{
    pixel_values_videos, timestamp_text, VideoProcessorConfig, VIDEO_PAD, VISION_END, VISION_START,
};
use neuron::preprocess::video::{self, load_frame_folder, load_mp4, Video, VideoLimits};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/videos").join(name)
}

/// A fresh folder under the system temp folder, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("neuron-video-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(name: &str) -> VideoProcessorConfig {
    let json = match name {
        "defaults" => serde_json::json!({}),
        "small" => serde_json::json!({"size": {"shortest_edge": 4096, "longest_edge": 16384}}),
        "fps05-min6" => serde_json::json!({"fps": 0.5, "min_frames": 6}),
        other => panic!("no config {other}"),
    };
    VideoProcessorConfig::from_json(&json).unwrap()
}

fn load(source: &str, sampling: Option<&VideoProcessorConfig>) -> Video {
    let path = fixture(source);
    video::load_video(&path, Some(3.0), sampling, &VideoLimits::default())
        .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()))
}

fn error_of(result: anyhow::Result<Video>) -> String {
    match result {
        Ok(v) => panic!("expected an error, got a {}×{} video of {} frames", v.width, v.height, v.total_frames),
        Err(e) => format!("{e:#}"),
    }
}

fn assert_mentions(err: &str, needles: &[&str]) {
    for n in needles {
        assert!(err.contains(n), "the error should mention {n:?}: {err}");
    }
}

struct Case {
    source: &'static str,
    config: &'static str,
    indices: &'static [usize],
    grid: (usize, usize, usize),
    timestamps: &'static [f64],
    patch_crcs: &'static [u32],
    text_crc: u32,
    text_len: usize,
}

/// CRC-32 of each decoded RGB frame (HWC) as PyAV 18.1.1 (FFmpeg 8) returns it from
/// `frame.to_ndarray(format="rgb24")`, in display order.
const GRADIENT_FRAME_CRCS: [u32; 50] = [
    0x2566f601, 0x040abc52, 0xc2f3d18c, 0xb6436517, 0x413dbb92, 0x52de019b, 0xf84c9d16, 0x75c0f556, 0x32387759,
    0x86d16df9, 0xa79d583e, 0x84c34f9a, 0xe796e864, 0x76e0a636, 0x3b5fce54, 0x5b25a50a, 0x99a142e1, 0x8a64d97e,
    0x8e19c3d5, 0x70b21bd3, 0xda02ad7d, 0x482c0e57, 0x11fef080, 0xf2abe022, 0xd9cc7e20, 0xcdb50f35, 0x56c0f40f,
    0x3240848e, 0xc9f5224b, 0x1b624c4f, 0xc51f8c84, 0x1efcb4ac, 0x4ef135b6, 0x58c36931, 0x08b3530b, 0x6b217182,
    0x66c11a3e, 0xfdc4c634, 0xb05cdbb0, 0x2d913164, 0x656cd1ba, 0xf5f2f053, 0xd2ae6509, 0x93530f15, 0x2112ea98,
    0x0589642b, 0xa32984d7, 0x2c2c4ccf, 0x0b63d043, 0xa3acd792,
];
const COUNTER_FRAME_CRCS: [u32; 36] = [
    0xe2c0f58c, 0xef64ddd1, 0x09c8eb98, 0x9713f92b, 0xa65e24a6, 0x8dcc0957, 0xead6389f, 0xd3bfe637, 0xc43b768e,
    0xccdf4116, 0x76e745c3, 0x38f1dffd, 0x8d990917, 0x7de889d3, 0xec1d331d, 0x0c233b39, 0xae30c356, 0xf73a592e,
    0x07d6fc67, 0x0e88cd4f, 0x5e5eb22f, 0x041e49c1, 0x45793421, 0x3921ff77, 0x253d3027, 0x8caeb206, 0x790a58f5,
    0x56926d8d, 0xd1b00a68, 0xe4a99313, 0x5674124b, 0x70a6906f, 0xeea78bf1, 0xa45d710f, 0xd03f0c8f, 0xaa9140b8,
];
const NTSC_FRAME_CRCS: [u32; 45] = [
    0x42f4080c, 0x55a1e5e9, 0xf206e4ac, 0x70ad9359, 0x51b999c1, 0x39e1a438, 0xed39acb4, 0x35144c33, 0x5a1ac847,
    0x6547806a, 0xf8bc9a8e, 0xca8b4da0, 0x04ca2d99, 0x5437faa6, 0x6a985257, 0xa45833d5, 0x5b1166e8, 0x28c3e6dc,
    0xf1fd3989, 0x977a7201, 0xc01fa0ce, 0x7a9820fc, 0x60a8e2ca, 0x0278f2d4, 0xf7d9b6bc, 0x6ac1f90f, 0x0c8336c2,
    0x704f2c69, 0x9f7476e6, 0x59c6305c, 0x1b1ed151, 0xd266601f, 0x18476dcc, 0x52a1b02f, 0x72c0e4c6, 0x3f464048,
    0x69256930, 0x8443999b, 0xfe0c227f, 0xbc4ea2ca, 0x4be602a8, 0x384e0816, 0xd9b89391, 0x2cf095ac, 0xaebe4549,
];

/// transformers 5.23 (`Qwen3VLVideoProcessor` + `Qwen3VLProcessor.replace_video_token`) on PyAV's frames:
/// (source, config, sampled indices, grid, timestamps, CRC-32 of pixel_values_videos per temporal patch,
/// CRC-32 and length of the placeholder text).
const REFERENCE: &[Case] = &[
    Case {
        source: "gradient-64x48-high.mp4",
        config: "defaults",
        indices: &[0, 16, 33, 49],
        grid: (2, 10, 14),
        timestamps: &[0.3333333333333333, 1.7083333333333333],
        patch_crcs: &[0x36b18062, 0xa805d533],
        text_crc: 0xf8dab3ca,
        text_len: 996,
    },
    Case {
        source: "gradient-64x48-high.mp4",
        config: "small",
        indices: &[0, 16, 33, 49],
        grid: (2, 4, 4),
        timestamps: &[0.3333333333333333, 1.7083333333333333],
        patch_crcs: &[0x701aa16b, 0x90ae10e2],
        text_crc: 0x3690967c,
        text_len: 190,
    },
    Case {
        source: "gradient-64x48-high.mp4",
        config: "fps05-min6",
        indices: &[0, 10, 20, 29, 39, 49],
        grid: (3, 8, 12),
        timestamps: &[0.20833333333333334, 1.0208333333333333, 1.8333333333333333],
        patch_crcs: &[0x30df1caa, 0x0614ad39, 0x2df89f2b],
        text_crc: 0x98c6b7bf,
        text_len: 1065,
    },
    Case {
        source: "counter-96x64-baseline.mp4",
        config: "defaults",
        indices: &[0, 6, 12, 18, 23, 29, 35],
        grid: (4, 8, 12),
        timestamps: &[0.3, 1.5, 2.5999999999999996, 3.5],
        patch_crcs: &[0x108585c9, 0x594eff0d, 0x550de642, 0x28b6eccd],
        text_crc: 0x1d2b362c,
        text_len: 1420,
    },
    Case {
        source: "counter-96x64-baseline.mp4",
        config: "small",
        indices: &[0, 6, 12, 18, 23, 29, 35],
        grid: (4, 2, 2),
        timestamps: &[0.3, 1.5, 2.5999999999999996, 3.5],
        patch_crcs: &[0x96fadeeb, 0xbac6fa0d, 0x17479e0a, 0xa66f77b0],
        text_crc: 0x347df374,
        text_len: 224,
    },
    Case {
        source: "counter-96x64-baseline.mp4",
        config: "fps05-min6",
        indices: &[0, 7, 14, 21, 28, 35],
        grid: (3, 8, 12),
        timestamps: &[0.35, 1.75, 3.15],
        patch_crcs: &[0xc22127f5, 0xbd10ed97, 0x0ecebf56],
        text_crc: 0x9c53e028,
        text_len: 1065,
    },
    Case {
        source: "ntsc-160x120-main.mp4",
        config: "defaults",
        indices: &[0, 15, 29, 44],
        grid: (2, 10, 14),
        timestamps: &[0.25025000000000003, 1.2178833333333334],
        patch_crcs: &[0x8d222618, 0x41abf955],
        text_crc: 0x2ea54a66,
        text_len: 996,
    },
    Case {
        source: "ntsc-160x120-main.mp4",
        config: "small",
        indices: &[0, 15, 29, 44],
        grid: (2, 2, 4),
        timestamps: &[0.25025000000000003, 1.2178833333333334],
        patch_crcs: &[0x07c04fb9, 0x12ca370c],
        text_crc: 0x6808b564,
        text_len: 138,
    },
    Case {
        source: "ntsc-160x120-main.mp4",
        config: "fps05-min6",
        indices: &[0, 9, 18, 26, 35, 44],
        grid: (3, 8, 12),
        timestamps: &[0.15015, 0.7340666666666666, 1.3179833333333333],
        patch_crcs: &[0x6e8d00ca, 0x45d95c25, 0xfa142964],
        text_crc: 0x75c0a32b,
        text_len: 1065,
    },
    Case {
        source: "frames-64x48",
        config: "defaults",
        indices: &[0, 2, 3, 5],
        grid: (2, 10, 14),
        timestamps: &[0.3333333333333333, 1.3333333333333335],
        patch_crcs: &[0x5b28bc5e, 0xd31511fc],
        text_crc: 0xa3397a85,
        text_len: 996,
    },
    Case {
        source: "frames-64x48",
        config: "small",
        indices: &[0, 2, 3, 5],
        grid: (2, 4, 4),
        timestamps: &[0.3333333333333333, 1.3333333333333335],
        patch_crcs: &[0x72a24161, 0xc31c0dfa],
        text_crc: 0x76f81ab8,
        text_len: 190,
    },
    Case {
        source: "frames-64x48",
        config: "fps05-min6",
        indices: &[0, 1, 2, 3, 4, 5],
        grid: (3, 8, 12),
        timestamps: &[0.16666666666666666, 0.8333333333333333, 1.5],
        patch_crcs: &[0xf2aacc20, 0x5374bbc9, 0x1ef3f9fd],
        text_crc: 0xe49943d4,
        text_len: 1065,
    },
];

fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn decoded_mp4_frames_equal_pyavs_byte_for_byte() {
    let clips: [(&str, usize, usize, f64, &[u32]); 3] = [
        ("gradient-64x48-high.mp4", 64, 48, 24.0, &GRADIENT_FRAME_CRCS),
        ("counter-96x64-baseline.mp4", 96, 64, 10.0, &COUNTER_FRAME_CRCS),
        ("ntsc-160x120-main.mp4", 160, 120, 30000.0 / 1001.0, &NTSC_FRAME_CRCS),
    ];
    for (name, width, height, fps, crcs) in clips {
        let v = load(name, None);
        assert_eq!((v.width, v.height), (width, height), "{name}: frame size");
        assert_eq!(v.fps, fps, "{name}: fps (PyAV's float(average_rate))");
        assert_eq!(v.total_frames, crcs.len(), "{name}: frame count (PyAV's stream.frames)");
        assert_eq!(v.indices, (0..crcs.len()).collect::<Vec<_>>(), "{name}: a whole video holds every frame");
        let differing: Vec<usize> = (0..crcs.len()).filter(|&i| crc(&v.frames[i]) != crcs[i]).collect();
        assert!(
            differing.is_empty(),
            "{name}: {} of {} decoded frames differ from PyAV's (frames {:?}…)",
            differing.len(),
            crcs.len(),
            &differing[..differing.len().min(10)]
        );
    }
}

#[test]
fn sampled_decoding_holds_only_the_sampled_frames_and_they_equal_whole_decoding() {
    let cfg = config("defaults");
    let whole = load("counter-96x64-baseline.mp4", None);
    let sampled = load("counter-96x64-baseline.mp4", Some(&cfg));
    assert_eq!(sampled.indices, [0, 6, 12, 18, 23, 29, 35], "the processor's sample of 36 frames at 10 fps");
    assert_eq!(sampled.total_frames, 36, "the frame count stays the video's");
    for (k, &i) in sampled.indices.iter().enumerate() {
        assert!(sampled.frames[k] == whole.frames[i], "sampled frame {i} differs from the same frame decoded whole");
    }
}

#[test]
fn processor_outputs_equal_the_references() {
    for case in REFERENCE {
        let what = format!("{} with the {} configuration", case.source, case.config);
        let cfg = config(case.config);
        let clip = load(case.source, Some(&cfg));
        let patches = pixel_values_videos(&clip, &cfg).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        assert_eq!(patches.frame_indices, case.indices, "{what}: sampled frame indices");
        let grid = (patches.grid.t, patches.grid.h, patches.grid.w);
        assert_eq!(grid, case.grid, "{what}: video_grid_thw");
        assert_eq!(patches.timestamps(cfg.temporal_patch_size), case.timestamps, "{what}: timestamps (seconds)");
        let rows_per_t = grid.1 * grid.2 * patches.row_len;
        assert_eq!(patches.values.len(), grid.0 * rows_per_t, "{what}: pixel_values_videos size");
        for (t, chunk) in patches.values.chunks(rows_per_t).enumerate() {
            assert_eq!(
                crc(&f32_bytes(chunk)),
                case.patch_crcs[t],
                "{what}: pixel_values_videos rows {}..{} (temporal patch {t}, frames {:?}) differ from the reference's",
                t * grid.1 * grid.2,
                (t + 1) * grid.1 * grid.2,
                &case.indices[2 * t..(2 * t + 2).min(case.indices.len())]
            );
        }
        let text = patches.placeholder(&cfg);
        assert!(
            crc(text.as_bytes()) == case.text_crc && text.len() == case.text_len,
            "{what}: the placeholder text differs from the reference's ({} bytes, expected {}): {}…",
            text.len(),
            case.text_len,
            &text[..text.len().min(120)]
        );
    }
}

/// A video whose pixels say where they come from: R = 40·frame + 10, G = row, B = column.
fn labelled_video(frames: usize, width: usize, height: usize) -> Video {
    let images = (0..frames)
        .map(|f| {
            let mut data = Vec::with_capacity(width * height * 3);
            for row in 0..height {
                for col in 0..width {
                    data.extend_from_slice(&[(40 * f + 10) as u8, row as u8, col as u8]);
                }
            }
            RgbImage { width, height, data }
        })
        .collect();
    Video::from_frames(images, 4.0).unwrap()
}

#[test]
fn patches_follow_the_references_order_and_pad_with_the_last_frame() {
    // 5 frames of 64×64, kept whole (no sampling) and not resized (the budget admits 64×64):
    // padded to 6 frames, grid (3, 4, 4) of 16-pixel patches in 2×2 merge blocks.
    let video = labelled_video(5, 64, 64);
    let cfg = VideoProcessorConfig::from_json(&serde_json::json!({
        "do_sample_frames": false, "size": {"shortest_edge": 1, "longest_edge": 1 << 20}
    }))
    .unwrap();
    let patches = pixel_values_videos(&video, &cfg).unwrap();
    assert_eq!((patches.grid.t, patches.grid.h, patches.grid.w), (3, 4, 4));
    assert_eq!(patches.row_len, 3 * 2 * 16 * 16);
    // Normalised with mean = std = 0.5: value = (x / 255 − 0.5) / 0.5, so x = round((v + 1) · 127.5).
    let level = |v: f32| ((v + 1.0) * 127.5).round() as i64;
    let mut row = 0;
    for t in 0..3 {
        for (block_row, block_col) in (0..2).flat_map(|r| (0..2).map(move |c| (r, c))) {
            for (in_row, in_col) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let (prow, pcol) = (block_row * 2 + in_row, block_col * 2 + in_col);
                let values = &patches.values[row * patches.row_len..(row + 1) * patches.row_len];
                for (k, &v) in values.iter().enumerate() {
                    let (c, tp, y, x) = (k / 512, (k / 256) % 2, (k / 16) % 16, k % 16);
                    let frame = (2 * t + tp).min(4); // frame 5 repeats frame 4
                    let expected = [40 * frame as i64 + 10, (prow * 16 + y) as i64, (pcol * 16 + x) as i64][c];
                    assert_eq!(
                        level(v),
                        expected,
                        "row {row} (t {t}, patch row {prow}, col {pcol}), column {k} (channel {c}, frame {tp} of the \
                         temporal patch, y {y}, x {x}): value {v}"
                    );
                }
                row += 1;
            }
        }
    }
    assert_eq!(row * patches.row_len, patches.values.len(), "every row visited");
    assert_eq!(patches.frame_indices, [0, 1, 2, 3, 4]);
    // Timestamps pad the indices like the frames: (0, 1), (2, 3), (4, 4) at 4 fps.
    assert_eq!(patches.timestamps(2), [0.125, 0.625, 1.0]);
    let text = patches.placeholder(&cfg);
    let frame = format!("{VISION_START}{}{VISION_END}", VIDEO_PAD.repeat(4));
    assert_eq!(text, format!("<0.1 seconds>{frame}<0.6 seconds>{frame}<1.0 seconds>{frame}"));
    assert_eq!(timestamp_text(0.625), "<0.6 seconds>", "0.625 is an exact tie, rounded to even");
}

#[test]
fn a_frame_folder_reads_its_pngs_in_name_order() {
    let v = load_frame_folder(&fixture("frames-64x48"), 3.0, None, &VideoLimits::default()).unwrap();
    assert_eq!((v.width, v.height, v.total_frames, v.fps), (64, 48, 6, 3.0));
    for (i, frame) in v.frames.iter().enumerate() {
        let png = neuron::preprocess::image_processor::load_rgb(&fixture(&format!("frames-64x48/frame-{i:03}.png")));
        assert!(*frame == png.unwrap().data, "frame {i} is not frame-{i:03}.png");
    }
}

fn write_png(path: &Path, width: u32, height: u32) {
    image::RgbImage::from_pixel(width, height, image::Rgb([10, 20, 30])).save(path).unwrap();
}

#[test]
fn a_frame_folder_with_mixed_sizes_is_refused_naming_the_file_and_both_sizes() {
    let dir = Scratch::new("mixed");
    write_png(&dir.0.join("a.png"), 64, 48);
    write_png(&dir.0.join("b.png"), 64, 48);
    write_png(&dir.0.join("c.png"), 32, 24);
    let err = error_of(load_frame_folder(&dir.0, 3.0, None, &VideoLimits::default()));
    assert_mentions(&err, &["c.png", "32×24", "a.png", "64×48"]);
}

#[test]
fn an_empty_folder_or_one_without_pngs_is_refused() {
    let dir = Scratch::new("empty");
    let err = error_of(load_frame_folder(&dir.0, 3.0, None, &VideoLimits::default()));
    assert_mentions(&err, &["empty"]);
    std::fs::write(dir.0.join("notes.txt"), "no frames here").unwrap();
    let err = error_of(load_frame_folder(&dir.0, 3.0, None, &VideoLimits::default()));
    assert_mentions(&err, &["no PNG frames", "1 other"]);
    std::fs::write(dir.0.join("frame.png"), "not a png").unwrap();
    let err = error_of(load_frame_folder(&dir.0, 3.0, None, &VideoLimits::default()));
    assert_mentions(&err, &["frame.png", "not a PNG"]);
    let err = error_of(video::load_video(&fixture("frames-64x48"), None, None, &VideoLimits::default()));
    assert_mentions(&err, &["no frame rate"]);
    let err = error_of(load_frame_folder(&fixture("frames-64x48"), 0.0, None, &VideoLimits::default()));
    assert_mentions(&err, &["positive", "0"]);
}

#[test]
fn other_codecs_and_containers_are_refused_by_name() {
    let err = error_of(load_mp4(&fixture("mpeg4-part2-64x48.mp4"), None, &VideoLimits::default()));
    assert_mentions(&err, &["mpeg4-part2-64x48.mp4", "mp4v", "MPEG-4 Part 2", "only H.264"]);
    let err = error_of(load_mp4(&fixture("vp9-64x48.webm"), None, &VideoLimits::default()));
    assert_mentions(&err, &["vp9-64x48.webm", "Matroska / WebM", "only MP4"]);
    // A PNG is not a video either.
    let err = error_of(load_mp4(&fixture("frames-64x48/frame-000.png"), None, &VideoLimits::default()));
    assert_mentions(&err, &["not a video in a known container"]);
}

#[test]
fn a_truncated_mp4_is_refused() {
    // The index comes first; the media data box declares more bytes than the half file holds.
    let cut = std::fs::read(fixture("truncated-64x48.mp4")).unwrap();
    let err = error_of(load_mp4(&fixture("truncated-64x48.mp4"), None, &VideoLimits::default()));
    assert_mentions(&err, &["truncated-64x48.mp4", "truncated", "past the end"]);
    // The same with the media data box's size mended to what is left: the index still names
    // samples past the end of the file.
    let mdat = cut.windows(4).position(|w| w == b"mdat").unwrap() - 4;
    let mut mended = cut.clone();
    mended[mdat..mdat + 4].copy_from_slice(&((cut.len() - mdat) as u32).to_be_bytes());
    let err = error_of(video::mp4::read_mp4(&mended, None, &VideoLimits::default()));
    assert_mentions(&err, &["truncated", "past its end", "bytes"]);
    // Cut before the index: no 'moov'.
    let whole = std::fs::read(fixture("gradient-64x48-high.mp4")).unwrap();
    for cut in [9, 40, whole.len() / 2, whole.len() - 100] {
        let err = error_of(video::mp4::read_mp4(&whole[..cut], None, &VideoLimits::default()));
        assert_mentions(&err, &["truncated"]);
    }
    let dir = Scratch::new("zero");
    std::fs::write(dir.0.join("zero.mp4"), b"").unwrap();
    let err = error_of(load_mp4(&dir.0.join("zero.mp4"), None, &VideoLimits::default()));
    assert_mentions(&err, &["zero.mp4", "empty (0 bytes)"]);
}

#[test]
fn damaged_media_data_gives_frames_or_an_error_never_a_panic() {
    let whole = std::fs::read(fixture("gradient-64x48-high.mp4")).unwrap();
    for (step, offset) in [(97usize, 3000usize), (13, 9000), (5, 1200)] {
        let mut damaged = whole.clone();
        for b in damaged.iter_mut().skip(offset).step_by(step) {
            *b ^= 0x5A;
        }
        let _ = video::mp4::read_mp4(&damaged, None, &VideoLimits::default());
    }
}

#[test]
fn a_one_frame_video_decodes_but_the_processor_refuses_it_as_the_reference_does() {
    let v = load_mp4(&fixture("one-frame-64x48.mp4"), None, &VideoLimits::default()).unwrap();
    assert_eq!((v.total_frames, v.frames.len()), (1, 1));
    let err = format!("{:#}", pixel_values_videos(&v, &VideoProcessorConfig::default()).unwrap_err());
    assert_mentions(&err, &["1 frame", "t:1 must be larger than temporal_factor:2"]);
}

#[test]
fn videos_beyond_the_limits_are_refused_with_the_figure_and_the_limit() {
    let path = fixture("gradient-64x48-high.mp4");
    let limits = |f: fn(&mut VideoLimits)| {
        let mut l = VideoLimits::default();
        f(&mut l);
        l
    };
    let err = error_of(load_mp4(&path, None, &limits(|l| l.max_frames = 49)));
    assert_mentions(&err, &["50 frames", "49", "max_frames"]);
    let err = error_of(load_mp4(&path, None, &limits(|l| l.max_frame_pixels = 3000)));
    assert_mentions(&err, &["64×48 = 3072 pixels", "3000", "max_frame_pixels"]);
    let err = error_of(load_mp4(&path, None, &limits(|l| l.max_held_bytes = 64 * 48 * 3 * 49)));
    assert_mentions(&err, &["50 RGB frames", "max_held_bytes"]);
    // Sampled, only 4 frames are held, which fits.
    load_mp4(&path, Some(&config("defaults")), &limits(|l| l.max_held_bytes = 64 * 48 * 3 * 4)).unwrap();
    let err = error_of(load_mp4(&path, None, &limits(|l| l.max_file_bytes = 1000)));
    assert_mentions(&err, &["bytes", "1000", "max_file_bytes"]);
    let dir = Scratch::new("limits");
    for i in 0..3 {
        write_png(&dir.0.join(format!("{i}.png")), 64, 48);
    }
    let err = error_of(load_frame_folder(&dir.0, 3.0, None, &limits(|l| l.max_frames = 2)));
    assert_mentions(&err, &["3 frames", "max_frames"]);
}

/// The one-frame clip with its sample tables emptied in place (the counts of `stts`, `stsc`,
/// `stsz` and `stco` set to 0): a video track that holds no frame.
fn without_samples(mp4: &[u8]) -> Vec<u8> {
    let mut bytes = mp4.to_vec();
    for (kind, count_at) in [(b"stts", 4), (b"stsc", 4), (b"stsz", 8), (b"stco", 4)] {
        let at = bytes.windows(4).position(|w| w == kind).unwrap_or_else(|| panic!("no {kind:?} box"));
        let body = at + 4;
        bytes[body + count_at..body + count_at + 4].copy_from_slice(&[0; 4]);
    }
    bytes
}

#[test]
fn an_mp4_whose_video_track_has_no_frames_is_refused() {
    let one = std::fs::read(fixture("one-frame-64x48.mp4")).unwrap();
    let err = error_of(video::mp4::read_mp4(&without_samples(&one), None, &VideoLimits::default()));
    assert_mentions(&err, &["no frames"]);
}
