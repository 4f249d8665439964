//! Preprocessing: bad input gets a clear error naming the file (never a panic), extreme sizes
//! work through the resize bounds, and the classic port bugs before the model — width and
//! height swapped, a resize factor of 28 for a 16-pixel patch with merge 2, one
//! `<|image_pad|>` too few — fail verification at the tap where they enter. Videos given to the
//! processor: each bad one is refused naming its file and the fix.

use std::path::{Path, PathBuf};

use neuron::preprocess::image_processor::RgbImage;
use neuron::preprocess::{Conversation, GenerationPrompt, Hooks, Item, Message, Processor, Role};
use parity::manifest::Manifest;
use replay::{CaseSetup, Mode, Perturbations};

const CASE: &str = "chelsea";

fn manifest() -> Manifest {
    replay::workspace_manifest().unwrap_or_else(|e| panic!("{e:#}"))
}

fn model_dir(manifest: &Manifest) -> PathBuf {
    CaseSetup::new(manifest.case(CASE).unwrap(), None).unwrap().model_dir
}

/// A fresh scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("neuron-preprocess-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_png(path: &Path, width: u32, height: u32) {
    let img = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]));
    img.save(path).unwrap();
}

fn process_error(processor: &Processor, image: &Path, prompt: &str) -> String {
    match processor.process(&[image], prompt) {
        Ok(p) => panic!("expected an error for {}, got {} tokens", image.display(), p.input_ids.len()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn a_truncated_or_unreadable_image_is_an_error_naming_the_file() {
    let manifest = manifest();
    let processor = Processor::from_dir(&model_dir(&manifest)).unwrap();
    let dir = scratch("truncated");
    for source in ["chelsea.png", "rocket.jpg"] {
        let bytes = std::fs::read(manifest.root.join("fixtures/images").join(source)).unwrap();
        let cut = dir.join(format!("cut-{source}"));
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let err = process_error(&processor, &cut, "Describe.");
        assert!(err.contains(&cut.display().to_string()), "the error does not name the file: {err}");
    }
    let text = dir.join("not-an-image.png");
    std::fs::write(&text, b"hello").unwrap();
    let err = process_error(&processor, &text, "Describe.");
    assert!(err.contains("not-an-image.png") && err.contains("not an image in a known format"), "{err}");
    let missing = dir.join("missing.png");
    let err = process_error(&processor, &missing, "Describe.");
    assert!(err.contains("missing.png"), "{err}");
}

#[test]
fn an_image_without_pixels_is_an_error() {
    let err = neuron::preprocess::image_processor::to_rgb(image::DynamicImage::new_rgb8(0, 5)).unwrap_err().to_string();
    assert!(err.contains("0×5") && err.contains("no pixels"), "{err}");
    // A PNG whose header says 0×0 is refused by the decoder, with the file named.
    let manifest = manifest();
    let processor = Processor::from_dir(&model_dir(&manifest)).unwrap();
    let path = scratch("empty").join("zero.png");
    std::fs::write(&path, png_with_header(0, 0)).unwrap();
    let err = process_error(&processor, &path, "Describe.");
    assert!(err.contains("zero.png"), "{err}");
}

/// The PNG signature and an IHDR chunk for an 8-bit RGB image of the given size (no pixel data).
fn png_with_header(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc32fast::hash(&ihdr).to_be_bytes());
    png
}

#[test]
fn images_below_and_above_the_pixel_bounds_are_resized_into_them() {
    let manifest = manifest();
    let processor = Processor::from_dir(&model_dir(&manifest)).unwrap();
    let (min, max) = (processor.image.min_pixels(), processor.image.max_pixels());
    let dir = scratch("bounds");
    for (w, h) in [(1, 1), (3, 7), (2000, 1500), (640, 4)] {
        let path = dir.join(format!("{w}x{h}.png"));
        write_png(&path, w, h);
        let p = processor.process(&[&path], "Describe.").unwrap_or_else(|e| panic!("{w}×{h}: {e:#}"));
        let g = p.grids[0];
        let pixels = g.h * g.w * 16 * 16;
        // smart_resize keeps each side at least one 32-pixel block, which can leave a very
        // thin image outside the bounds — as the reference does.
        let side_at_floor = g.h == 2 || g.w == 2;
        assert!(
            (min..=max).contains(&pixels) || side_at_floor,
            "{w}×{h} became a {}×{} patch grid ({pixels} pixels), outside [{min}, {max}]",
            g.h,
            g.w
        );
    }
}

#[test]
fn each_image_takes_one_pad_token_per_merge_block() {
    let manifest = manifest();
    let dir = model_dir(&manifest);
    let grid = neuron::vision::positions::Grid { t: 1, h: 6, w: 6 };
    // merge 2 would make merge + merge equal merge²; merge 3 tells them apart.
    for (merge, tokens) in [(2, 9), (3, 4)] {
        let prompt = neuron::preprocess::prompt::PromptProcessor::from_dir(&dir, merge).unwrap();
        assert_eq!(prompt.image_token_counts(&[grid]), [tokens], "merge {merge}");
    }
}

#[test]
fn a_prompt_whose_image_count_differs_from_the_images_given_is_an_error() {
    let manifest = manifest();
    let processor = Processor::from_dir(&model_dir(&manifest)).unwrap();
    let image = manifest.root.join("fixtures/images/chelsea.png");
    let err = process_error(&processor, &image, "And this one: <|vision_start|><|image_pad|><|vision_end|>");
    assert!(err.contains("2 image placeholder") && err.contains("1 image(s)"), "{err}");
}

#[test]
fn a_checkpoint_without_tokenizer_or_chat_template_is_an_error_naming_what_is_missing() {
    let manifest = manifest();
    let source = model_dir(&manifest);
    for (missing, expected) in
        [(&["tokenizer.json"][..], "tokenizer.json"), (&["chat_template.jinja"][..], "chat template")]
    {
        let dir = scratch(&format!("no-{}", missing[0]));
        for entry in std::fs::read_dir(&source).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !missing.contains(&name.as_str()) && name != "model.safetensors" {
                std::fs::copy(entry.path(), dir.join(&name)).unwrap();
            }
        }
        let err = match Processor::from_dir(&dir) {
            Ok(_) => panic!("a checkpoint without {missing:?} was accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(expected) && err.contains(&dir.display().to_string()), "{err}");
    }
}

/// Runs the end-to-end mode with preprocessing hooks and returns the first failing tap.
fn first_failing_tap(hooks: Hooks) -> Result<String, String> {
    let manifest = manifest();
    let inputs = CaseSetup::new(manifest.case(CASE).unwrap(), None).unwrap();
    let model = replay::load_model(&inputs).unwrap();
    let perturb = Perturbations { preprocess: hooks, ..Default::default() };
    let run = replay::run_with(&inputs, Mode::FromImageFiles, &model, &perturb).map_err(|e| format!("{e:#}"))?;
    let case = manifest.case(CASE).unwrap();
    for tap in case.taps_checked(Mode::FromImageFiles) {
        let result = run.check(case, tap).unwrap();
        if !result.passed() {
            println!("{}", result.message());
            return Ok(tap.to_string());
        }
    }
    Ok("(none)".into())
}

#[test]
fn width_and_height_swapped_in_the_resize_target_fail_at_the_image_grid() {
    let swap = |_: &RgbImage, (h, w): (usize, usize)| (w, h);
    let first = first_failing_tap(Hooks { target_size: Some(&swap), ..Default::default() });
    // The swapped grid has as many tokens, so the ids still match; the grid does not.
    assert_eq!(first, Ok("input.image_grid_thw".to_string()));
}

#[test]
fn a_resize_factor_of_28_for_a_16_pixel_patch_is_refused_before_the_model_runs() {
    let manifest = manifest();
    let processor = Processor::from_dir(&model_dir(&manifest)).unwrap();
    let (min, max) = (processor.image.min_pixels(), processor.image.max_pixels());
    let factor_28 = move |img: &RgbImage, _: (usize, usize)| {
        neuron::preprocess::image_processor::smart_resize(img.height, img.width, 28, min, max).unwrap()
    };
    // The reference's reshape cannot tile such a size either; the Rust processor says so
    // instead of cropping silently.
    let err = first_failing_tap(Hooks { target_size: Some(&factor_28), ..Default::default() }).unwrap_err();
    assert!(err.contains("does not tile into 32-pixel blocks"), "{err}");
}

#[test]
fn one_image_pad_too_few_fails_at_the_input_ids() {
    let one_fewer = |mut counts: Vec<usize>| {
        counts[0] -= 1;
        counts
    };
    let first = first_failing_tap(Hooks { image_token_counts: Some(&one_fewer), ..Default::default() });
    // The model then refuses the prompt (its image-token run no longer fits the grid); the
    // ids recorded before that are where the report points.
    assert_eq!(first, Ok("input.input_ids".to_string()));
}

/// The constructs of the published Qwen chat templates (a macro, `namespace`, reversed
/// slicing, `is string`, Python string methods, `tojson`, `is defined`) render as
/// transformers renders them. The expected text is transformers' own output for this
/// template and message (`render_jinja_template`, transformers 5.23.0).
#[test]
fn a_qwen_style_chat_template_renders_as_transformers_renders_it() {
    let manifest = manifest();
    let dir = scratch("qwen-template");
    std::fs::copy(model_dir(&manifest).join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/qwen-style-chat-template.jinja");
    std::fs::copy(template, dir.join("chat_template.jinja")).unwrap();
    let prompt = neuron::preprocess::prompt::PromptProcessor::from_dir(&dir, 2).unwrap();
    let rendered = prompt.render(2, "Compare the two images.");
    std::fs::remove_dir_all(&dir).unwrap();
    let expected =
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|>\
                    Compare the two images.<|im_end|>\n<|im_start|>assistant\n<think>\n";
    assert_eq!(rendered.map_err(|e| format!("{e:#}")).as_deref(), Ok(expected));
}

/// One user message: a video (with a folder's frame rate), then a question.
fn with_video(path: &Path, fps: Option<f64>) -> Conversation {
    let items = vec![Item::Video { path: path.to_path_buf(), fps }, Item::Text("What happens?".into())];
    Conversation { messages: vec![Message::items(Role::User, items)], ..Default::default() }
}

fn video_error(processor: &Processor, path: &Path, fps: Option<f64>) -> String {
    match processor.process_conversation(&with_video(path, fps), GenerationPrompt::Open) {
        Ok(p) => panic!("expected an error for {}, got {} tokens", path.display(), p.input_ids.len()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_videos_are_refused_by_the_processor_naming_the_file_and_the_fix() {
    let manifest = manifest();
    let processor = Processor::from_dir(&model_dir(&manifest)).unwrap();
    let videos = manifest.root.join("fixtures/videos");
    let cases: [(&str, Option<f64>, &[&str]); 6] = [
        ("one-frame-64x48.mp4", None, &["one-frame-64x48.mp4", "1 frame", "temporal_factor:2"]),
        ("truncated-64x48.mp4", None, &["truncated-64x48.mp4", "truncated"]),
        ("mpeg4-part2-64x48.mp4", None, &["mpeg4-part2-64x48.mp4", "MPEG-4 Part 2", "only H.264"]),
        ("vp9-64x48.webm", None, &["vp9-64x48.webm", "Matroska / WebM", "only MP4"]),
        ("counter-96x64-baseline.mp4", Some(10.0), &["counter-96x64-baseline.mp4", "its own frame rate"]),
        ("frames-64x48", None, &["frames-64x48", "no frame rate of its own"]),
    ];
    for (name, fps, needles) in cases {
        let err = video_error(&processor, &videos.join(name), fps);
        for needle in needles {
            assert!(err.contains(needle), "{name}: the error does not say {needle:?}: {err}");
        }
    }
    let dir = scratch("video-folders");
    for (i, (w, h)) in [(64, 48), (64, 48), (48, 64)].into_iter().enumerate() {
        write_png(&dir.join(format!("frame-{i}.png")), w, h);
    }
    let err = video_error(&processor, &dir, Some(2.0));
    assert!(err.contains("frame-2.png") && err.contains("48×64") && err.contains("64×48"), "{err}");
    let missing = dir.join("missing.mp4");
    let err = video_error(&processor, &missing, None);
    assert!(err.contains("missing.mp4"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_video_beyond_the_frame_and_pixel_budget_is_refused_before_it_is_held() {
    let manifest = manifest();
    let mut processor = Processor::from_dir(&model_dir(&manifest)).unwrap();
    let clip = manifest.root.join("fixtures/videos/ntsc-160x120-main.mp4");
    processor.video_limits.max_frame_pixels = 160 * 120 - 1;
    let err = video_error(&processor, &clip, None);
    assert!(err.contains("ntsc-160x120-main.mp4") && err.contains("160×120 = 19200 pixels"), "{err}");
    processor.video_limits = Default::default();
    processor.video_limits.max_frames = 44;
    let err = video_error(&processor, &clip, None);
    assert!(err.contains("45 frames") && err.contains("max_frames"), "{err}");
}

#[test]
fn a_checkpoint_without_a_video_processor_refuses_a_video_naming_the_file_to_add() {
    let manifest = manifest();
    let dir = scratch("no-video-processor");
    for file in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json"] {
        std::fs::copy(model_dir(&manifest).join(file), dir.join(file)).unwrap();
    }
    let processor = Processor::from_dir(&dir).unwrap();
    let clip = manifest.root.join("fixtures/videos/counter-96x64-baseline.mp4");
    let err = video_error(&processor, &clip, None);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        err.contains("holds a video")
            && err.contains("Qwen2VLVideoProcessor")
            && err.contains("video_preprocessor_config.json"),
        "{err}"
    );
}
