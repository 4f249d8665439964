use super::*;
use contract::{ComputeDtype, Tap};

use crate::compare::Tolerance;

const GOOD: &str = r#"
    [tolerance]
    atol = 1e-4
    rtol = 1e-4

    [models."tiny"]
    path = "fixtures/models/tiny"
    tolerance = { atol = 2e-4, rtol = 1e-4 }
    files = { "config.json" = "aa" }

    [images.cat]
    path = "fixtures/images/cat.png"
    sha256 = "bb"

    [cases.one]
    model = "tiny"
    images = ["cat"]
    prompt = "Describe."
    tap_tolerance = { "vision.*" = { atol = 1e-5, rtol = 0.0 }, "vision.block.*" = { atol = 3e-5, rtol = 0.0 }, "lm.norm" = { atol = 5e-5, rtol = 0.0 } }

    [cases.one.dumps]
    "lm.norm" = { sha256 = "cc", shape = [4, 8], dtype = "f32" }
    "input.input_ids" = { sha256 = "dd", shape = [4], dtype = "i64" }

    [cases.two]
    model = "tiny"
    prompt = "Hello."
    tolerance = { atol = 1e-2, rtol = 1e-2 }
"#;

fn parse(text: &str) -> Result<Manifest, ManifestError> {
    Manifest::parse(text, Path::new("fixtures.toml"), Path::new("."))
}

fn tap(name: &str) -> Tap {
    Tap::parse(name).unwrap_or_else(|| panic!("{name} is a contract tap"))
}

fn parse_err(text: &str) -> String {
    parse(text).expect_err("manifest should be rejected").to_string()
}

#[test]
fn a_cases_loader_defaults_to_the_processor_and_a_bad_one_names_both_choices() {
    let m = parse(GOOD).unwrap();
    assert_eq!(m.cases["one"].loader, ImageLoader::Processor, "default loader");
    let with = GOOD.replace("[cases.one]\n", "[cases.one]\n    loader = \"load_image\"\n");
    assert_eq!(parse(&with).unwrap().cases["one"].loader, ImageLoader::LoadImage);
    let err = parse_err(&GOOD.replace("[cases.one]\n", "[cases.one]\n    loader = \"pil\"\n"));
    assert!(err.contains("unknown variant `pil`, expected `processor` or `load_image`"), "{err}");
}

#[test]
fn the_loader_is_an_input_of_a_case() {
    let m = parse(GOOD).unwrap();
    let digest = |m: &Manifest| m.case("one").unwrap().inputs_digest(None, &[], &[], "h");
    let mut with = m.clone();
    with.cases.get_mut("one").unwrap().loader = ImageLoader::LoadImage;
    assert_ne!(digest(&m), digest(&with), "a case's loader must make its dumps stale when it changes");
}

/// GOOD with case `one` in bf16, its lm.norm carrying a recorded noise.
fn bf16_one() -> String {
    GOOD.replace("[cases.one]\n", "[cases.one]\n    dtype = \"bf16\"\n    tap_k = { \"lm.*\" = 3.0 }\n")
        .replace(
            r#""lm.norm" = { sha256 = "cc", shape = [4, 8], dtype = "f32" }"#,
            r#""lm.norm" = { sha256 = "cc", shape = [4, 8], dtype = "f32", noise = { max_abs = 0.1, rms = 0.02, cosine = 0.9999 } }"#,
        )
}

#[test]
fn a_bf16_tap_is_judged_by_k_times_its_recorded_noise_and_an_integer_tap_stays_exact() {
    let m = parse(&bf16_one()).unwrap();
    assert_eq!(m.cases["one"].dtype, ComputeDtype::Bf16);
    assert_eq!(m.cases["two"].dtype, ComputeDtype::F32, "f32 is the default");
    let norm = m.case("one").unwrap().compare_options(tap("lm.norm"), None).unwrap();
    let cal = norm.calibration.expect("a bf16 float tap is calibrated");
    assert_eq!((cal.k, cal.noise.max_abs, cal.noise.rms), (3.0, 0.1, 0.02), "tap_k overrides [calibration] k");
    assert_eq!(cal.tolerance(), Tolerance { atol: 0.1 * 3.0, rtol: 0.0 });
    let ids = m.case("one").unwrap().compare_options(tap("input.input_ids"), None).unwrap();
    assert_eq!(ids.calibration, None, "integer taps match exactly in every dtype");
    let f32_case = m.case("two").unwrap().compare_options(tap("lm.norm"), None).unwrap();
    assert_eq!((f32_case.calibration, f32_case.tolerance), (None, Tolerance { atol: 1e-2, rtol: 1e-2 }));
    assert_eq!(
        m.case("one").unwrap().calibration_k(tap("vision.tower")),
        2.0,
        "the default k without a [calibration] table"
    );
}

#[test]
fn a_bf16_float_tap_without_a_recorded_noise_is_an_error_naming_the_capture_to_run() {
    let text = bf16_one().replace(", noise = { max_abs = 0.1, rms = 0.02, cosine = 0.9999 }", "");
    let err = parse(&text).unwrap().case("one").unwrap().compare_options(tap("lm.norm"), None).expect_err("no noise");
    assert!(err.contains("records no noise") && err.contains("cargo xtask capture --case one"), "{err}");
}

#[test]
fn tap_k_belongs_to_bf16_cases_and_k_must_be_positive() {
    let err = parse_err(&GOOD.replace("[cases.two]\n", "[cases.two]\n    tap_k = { \"lm.norm\" = 2.0 }\n"));
    assert!(err.contains("cases.two.tap_k") && err.contains("only a bf16 case"), "{err}");
    let err = parse_err(&bf16_one().replace("\"lm.*\" = 3.0", "\"lm.*\" = 0.0"));
    assert!(err.contains("positive multiple"), "{err}");
    let err = parse_err(&format!("[calibration]\nk = -1.0\n{GOOD}"));
    assert!(err.contains("calibration.k"), "{err}");
    let err = parse_err(&GOOD.replace("[cases.two]\n", "[cases.two]\n    dtype = \"f16\"\n"));
    assert!(err.contains("unknown variant `f16`"), "{err}");
}

#[test]
fn the_dtype_is_an_input_of_a_case_but_f32_leaves_old_digests_alone() {
    let m = parse(GOOD).unwrap();
    let digest = |m: &Manifest| m.case("one").unwrap().inputs_digest(None, &[], &[], "h");
    let mut with = m.clone();
    with.cases.get_mut("one").unwrap().dtype = ComputeDtype::Bf16;
    assert_ne!(digest(&m), digest(&with), "a case's dtype must make its dumps stale when it changes");
    let json_before_the_field = m.case("one").unwrap().inputs_digest(None, &[], &[], "h");
    assert_eq!(digest(&m), json_before_the_field);
}

#[test]
fn tolerance_resolves_from_tap_then_case_then_model_then_global() {
    let m = parse(GOOD).unwrap();
    let tol = |case, tap| {
        let t = m.case(case).unwrap().tolerance(self::tap(tap));
        (t.atol, t.rtol)
    };
    assert_eq!(tol("one", "vision.block.1"), (3e-5, 0.0), "the longest matching pattern wins");
    assert_eq!(tol("one", "vision.tower"), (1e-5, 0.0));
    assert_eq!(tol("one", "lm.norm"), (5e-5, 0.0));
    assert_eq!(tol("one", "lm.layer.0"), (2e-4, 1e-4), "model tolerance");
    assert_eq!(tol("two", "lm.norm"), (1e-2, 1e-2), "case tolerance");
}

#[test]
fn recorded_files_cover_model_files_images_and_dumps() {
    let m = parse(GOOD).unwrap();
    let paths: Vec<String> = m.recorded_files().iter().map(|f| f.path.display().to_string()).collect();
    assert_eq!(
        paths,
        [
            "fixtures/models/tiny/config.json",
            "fixtures/images/cat.png",
            "fixtures/dumps/one/input.input_ids.npy.gz",
            "fixtures/dumps/one/lm.norm.npy.gz"
        ]
    );
}

#[test]
fn dumps_come_back_in_pipeline_order() {
    let m = parse(GOOD).unwrap();
    let taps: Vec<String> = m.case("one").unwrap().dumps_in_order().map(|(t, _)| t.to_string()).collect();
    assert_eq!(taps, ["input.input_ids", "lm.norm"]);
}

#[test]
fn unknown_model_is_rejected_naming_the_known_ones() {
    let err = parse_err(&GOOD.replace("model = \"tiny\"\n    images", "model = \"big\"\n    images"));
    assert!(err.contains("unknown model \"big\"") && err.contains("\"tiny\""), "{err}");
}

#[test]
fn unknown_tap_is_rejected_naming_the_known_ones() {
    let err = parse_err(&GOOD.replace("\"lm.norm\" = { sha256", "\"lm.nrom\" = { sha256"));
    assert!(err.contains("unknown tap \"lm.nrom\"") && err.contains("lm.logits_last"), "{err}");
}

#[test]
fn unknown_keys_are_rejected_with_their_line() {
    let err = parse_err(&GOOD.replace("prompt = \"Hello.\"", "prompt = \"Hello.\"\n    promt = \"typo\""));
    assert!(err.contains("promt") && err.contains("line"), "{err}");
}

#[test]
fn semantic_errors_name_the_line_of_the_entry() {
    let text = GOOD.replace("model = \"tiny\"\n    images", "model = \"big\"\n    images");
    let line = text.lines().position(|l| l.contains("model = \"big\"")).unwrap() + 1;
    let err = parse_err(&text);
    assert!(err.contains(&format!("line {line}:")), "expected line {line}: {err}");
}

#[test]
fn duplicate_case_names_are_rejected_with_their_line() {
    let err = parse_err(&format!("{GOOD}\n[cases.two]\nmodel = \"tiny\"\nprompt = \"again\"\n"));
    assert!(err.contains("duplicate") && err.contains("line"), "{err}");
}

#[test]
fn negative_or_nan_tolerances_are_rejected() {
    for bad in ["atol = -1e-4", "atol = nan"] {
        let err = parse_err(&GOOD.replacen("atol = 1e-4", bad, 1));
        assert!(err.contains("tolerance.atol"), "{bad}: {err}");
    }
}

#[test]
fn paths_that_leave_the_repository_are_rejected() {
    for bad in ["../elsewhere/cat.png", "/etc/passwd"] {
        let err = parse_err(&GOOD.replace("fixtures/images/cat.png", bad));
        assert!(err.contains("images.cat.path"), "{bad}: {err}");
    }
}

#[test]
fn a_dump_whose_dtype_contradicts_the_contract_is_rejected() {
    let err = parse_err(&GOOD.replace("shape = [4], dtype = \"i64\"", "shape = [4], dtype = \"f32\""));
    assert!(err.contains("input.input_ids") && err.contains("i64"), "{err}");
}

const EXTERNAL: &str = r#"
    [models."big"]
    weights_env = "NEURON_TEST_BIG_DIR"
    hf_repo = "Org/Big"
    stream = true

    [images.cat]
    path = "fixtures/images/cat.png"

    [cases.big-cat]
    model = "big"
    images = ["cat"]
    prompt = "Describe."
    rows = { "vision.*" = "first", "lm.*" = "last", "lm.norm" = "first" }
"#;

#[test]
fn rows_pick_the_longest_matching_pattern_and_leave_row_less_taps_whole() {
    let m = parse(EXTERNAL).unwrap();
    let pick = |name: &str| m.case("big-cat").unwrap().row_pick(tap(name));
    assert_eq!(pick("vision.block.3"), Some(RowPick::First));
    assert_eq!(pick("lm.layer.0"), Some(RowPick::Last));
    assert_eq!(pick("lm.norm"), Some(RowPick::First), "the exact name beats the stem");
    assert_eq!(pick("lm.logits_last"), None, "one position already");
    assert_eq!(pick("input.pixel_values"), None, "not selected");
    assert_eq!((RowPick::First.index(7), RowPick::Last.index(7)), (0, 6));
}

#[test]
fn teacher_forcing_needs_its_input_recorded_whole() {
    let text = format!(
        "{EXTERNAL}\n[cases.big-cat.dumps]\n{}",
        ["input.input_ids", "input.pixel_values", "vision.block.0", "vision.projector", "lm.layer.0"]
            .iter()
            .map(|t| format!(
                "\"{t}\" = {{ sha256 = \"aa\", shape = [1], dtype = \"{}\" }}\n",
                Tap::parse(t).unwrap().dtype()
            ))
            .collect::<String>()
    );
    let m = parse(&text).unwrap();
    let checked = |mode| m.case("big-cat").unwrap().taps_checked(mode).iter().map(Tap::to_string).collect::<Vec<_>>();
    // The projector is cut to one row: the text model cannot be fed the reference rows.
    assert!(checked(crate::mode::Mode::LmTeacherForced).is_empty());
    // pixel_values is whole: the vision tower can be teacher-forced.
    assert_eq!(checked(crate::mode::Mode::VisionTeacherForced), ["vision.block.0", "vision.projector"]);
    assert_eq!(checked(crate::mode::Mode::FromImageFiles).len(), 5);
}

#[test]
fn an_external_checkpoint_nobody_named_is_absent_with_the_flag_and_variable() {
    let m = parse(&EXTERNAL.replace("NEURON_TEST_BIG_DIR", "NEURON_TEST_UNSET_VARIABLE")).unwrap();
    match m.weights("big", None).unwrap() {
        Weights::Absent(why) => {
            assert!(
                why.contains("--weights DIR") && why.contains("NEURON_TEST_UNSET_VARIABLE") && why.contains("Org/Big"),
                "{why}"
            )
        }
        found => panic!("expected absent, got {found:?}"),
    }
    assert!(m.recorded_files().is_empty(), "an external model records no files");
}

#[test]
fn a_named_checkpoint_must_hold_config_json_with_the_recorded_digest() {
    let dir = std::env::temp_dir().join(format!("parity-weights-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let m = parse(EXTERNAL).unwrap();
    let err = m.weights("big", Some(&dir)).unwrap_err();
    assert!(err.contains("--weights") && err.contains("no config.json"), "{err}");

    std::fs::write(dir.join("config.json"), "{}").unwrap();
    assert_eq!(m.weights("big", Some(&dir)).unwrap(), Weights::Found(dir.clone()));
    let recorded = EXTERNAL.replace("stream = true", "stream = true\n    config_sha256 = \"0123\"");
    let err = parse(&recorded).unwrap().weights("big", Some(&dir)).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(err.contains("0123") && err.contains(&crate::digest::sha256_bytes(b"{}")), "{err}");
}

#[test]
fn a_model_needs_exactly_one_of_path_and_weights_env() {
    let both = EXTERNAL.replace("hf_repo", "path = \"fixtures/models/big\"\n    hf_repo");
    assert!(parse_err(&both).contains("exactly one of `path`"), "{}", parse_err(&both));
    let neither = EXTERNAL.replace("weights_env = \"NEURON_TEST_BIG_DIR\"", "");
    assert!(parse_err(&neither).contains("exactly one of `path`"));
    let bad_var = EXTERNAL.replace("NEURON_TEST_BIG_DIR", "my dir");
    assert!(parse_err(&bad_var).contains("environment variable name"));
}

#[test]
fn unknown_taps_and_row_picks_in_rows_are_rejected() {
    let err = parse_err(&EXTERNAL.replace("\"lm.norm\" = \"first\"", "\"lm.nrom\" = \"first\""));
    assert!(err.contains("rows") && err.contains("unknown tap \"lm.nrom\""), "{err}");
    let err = parse_err(&EXTERNAL.replace("\"lm.norm\" = \"first\"", "\"lm.norm\" = \"middle\""));
    assert!(err.contains("middle"), "{err}");
}

// Requests a server would refuse: each names the case, the field and the fix.

const BATCH: &str = r#"
    [cases.batched]
    model = "tiny"
    batch = ["one", "two"]
"#;

#[test]
fn a_batch_of_single_cases_of_one_model_and_dtype_is_accepted() {
    let m = parse(&format!("{GOOD}{BATCH}")).unwrap();
    let members: Vec<&str> = m.cases["batched"].batch.as_ref().unwrap().iter().map(|c| c.as_str()).collect();
    assert_eq!(members, ["one", "two"]);
}

#[test]
fn a_batch_naming_an_unknown_case_is_refused_with_the_known_ones() {
    let err = parse_err(&format!("{GOOD}{}", BATCH.replace("\"two\"]", "\"three\"]")));
    assert!(
        err.contains("cases.batched.batch: unknown case \"three\"; known cases: \"batched\", \"one\", \"two\""),
        "{err}"
    );
    assert!(err.contains("fixtures.toml"), "the error names the file: {err}");
}

#[test]
fn a_batch_mixing_models_is_refused_naming_both() {
    let other = "\n    [models.\"other\"]\n    path = \"fixtures/models/other\"\n";
    let text = format!("{GOOD}{other}{BATCH}")
        .replace("[cases.two]\n    model = \"tiny\"", "[cases.two]\n    model = \"other\"");
    let err = parse_err(&text);
    assert!(err.contains("\"two\" runs model \"other\" but the batch runs \"tiny\"; a batch runs one model"), "{err}");
}

#[test]
fn a_batch_mixing_dtypes_is_refused_naming_both() {
    let text = format!("{GOOD}{BATCH}").replace("[cases.two]\n", "[cases.two]\n    dtype = \"bf16\"\n");
    let err = parse_err(&text);
    assert!(err.contains("\"two\" computes in bf16 but the batch in f32; a batch computes in one dtype"), "{err}");
}

#[test]
fn a_batch_of_one_case_is_refused() {
    let err = parse_err(&format!("{GOOD}{}", BATCH.replace("[\"one\", \"two\"]", "[\"one\"]")));
    assert!(err.contains("cases.batched.batch: a batch needs at least two cases"), "{err}");
}

const TURNS: &str = r#"
    [cases.chat]
    model = "tiny"
    generate = 2
    turns = [
        [{ role = "user", content = [{ image = "cat" }, { text = "What is it?" }] }],
        [{ role = "user", content = "And its colour?" }],
    ]
"#;

#[test]
fn a_conversation_fed_turn_by_turn_is_accepted() {
    let m = parse(&format!("{GOOD}{TURNS}")).unwrap();
    assert_eq!(m.cases["chat"].turns.as_ref().map(Vec::len), Some(2));
}

#[test]
fn an_empty_turn_is_refused_with_its_index() {
    let err =
        parse_err(&format!("{GOOD}{}", TURNS.replace("[{ role = \"user\", content = \"And its colour?\" }]", "[]")));
    assert!(err.contains("cases.chat.turns[1]: an empty turn; give each turn at least one user message"), "{err}");
}

#[test]
fn turns_without_generate_are_refused() {
    let err = parse_err(&format!("{GOOD}{}", TURNS.replace("generate = 2\n", "")));
    assert!(err.contains("cases.chat.generate: a conversation fed turn by turn generates each turn's reply"), "{err}");
}

#[test]
fn a_conversation_ending_with_the_assistant_is_refused_because_it_asks_for_a_reply() {
    let text = format!(
        "{GOOD}{}",
        r#"
    [cases.chat]
    model = "tiny"
    messages = [
        { role = "user", content = "Hello." },
        { role = "assistant", content = "Hi." },
    ]
"#
    );
    let err = parse_err(&text);
    assert!(err.contains("cases.chat.messages: the conversation ends with the assistant's turn"), "{err}");
    assert!(err.contains("end it with a user message"), "the error gives the fix: {err}");
}

#[test]
fn a_case_giving_two_requests_is_refused() {
    let text = format!("{GOOD}{}", TURNS.replace("generate = 2\n", "generate = 2\n    prompt = \"Hi.\"\n"));
    let err = parse_err(&text);
    assert!(err.contains("cases.chat: give exactly one request"), "{err}");
}

const VIDEO: &str = r#"
    [videos.clip]
    path = "fixtures/videos/clip.mp4"
    sha256 = "ee"

    [videos.frames]
    path = "fixtures/videos/frames"
    fps = 2.5

    [cases.watch]
    model = "tiny"
    messages = [{ role = "user", content = [{ image = "cat" }, { video = "clip" }, { video = "frames" }, { text = "Same?" }] }]
"#;

#[test]
fn a_conversation_names_its_videos_in_order_and_they_are_recorded_files() {
    let m = parse(&format!("{GOOD}{VIDEO}")).unwrap();
    let case = m.case("watch").unwrap();
    assert_eq!(case.video_names(), ["clip", "frames"], "the video items in message order");
    assert_eq!(m.videos["frames"].fps, Some(2.5));
    let recorded: Vec<String> = m.recorded_files().into_iter().map(|f| f.entry).collect();
    assert!(recorded.contains(&"videos.clip.sha256".to_owned()), "{recorded:?}");
    assert!(!recorded.iter().any(|e| e.starts_with("videos.frames")), "no digest recorded yet: {recorded:?}");
}

#[test]
fn videos_are_inputs_of_a_case_but_cases_without_videos_keep_their_digests() {
    let m = parse(&format!("{GOOD}{VIDEO}")).unwrap();
    let plain = parse(GOOD).unwrap();
    assert_eq!(
        m.case("one").unwrap().inputs_digest(None, &[], &[], "h"),
        plain.case("one").unwrap().inputs_digest(None, &[], &[], "h"),
        "a case without videos is digested as before"
    );
    let watch = m.case("watch").unwrap();
    let digest = |sha: &str| watch.inputs_digest(None, &[], &[("clip".into(), sha.into())], "h");
    assert_ne!(digest("ee"), digest("ef"), "the video's bytes");
    let faster = parse(&format!("{GOOD}{}", VIDEO.replace("fps = 2.5", "fps = 3.0"))).unwrap();
    let digest_at =
        |m: &Manifest| m.case("watch").unwrap().inputs_digest(None, &[], &[("frames".into(), "ff".into())], "h");
    assert_ne!(digest_at(&m), digest_at(&faster), "a frame folder's rate");
}

#[test]
fn a_video_item_must_name_a_known_video_with_a_positive_rate() {
    let err = parse_err(&format!("{GOOD}{}", VIDEO.replace("{ video = \"clip\" }", "{ video = \"film\" }")));
    assert!(err.contains("cases.watch: unknown video \"film\"; known videos: \"clip\", \"frames\""), "{err}");
    let err = parse_err(&format!("{GOOD}{}", VIDEO.replace("fps = 2.5", "fps = 0.0")));
    assert!(err.contains("videos.frames.fps = 0: a positive number of frames per second"), "{err}");
    let err = parse_err(&format!("{GOOD}{}", VIDEO.replace("fixtures/videos/clip.mp4", "../clip.mp4")));
    assert!(err.contains("videos.clip.path"), "{err}");
}

#[test]
fn videos_are_refused_in_turns_prefixes_and_batches() {
    let turns =
        VIDEO.replace("messages = [", "generate = 2\n    turns = [[").replace("\"Same?\" }] }]", "\"Same?\" }] }]]");
    let err = parse_err(&format!("{GOOD}{turns}"));
    assert!(err.contains("cases.watch: { video = … } items are replayed in a conversation of one request"), "{err}");
    let batch = r#"
    [cases.both]
    model = "tiny"
    batch = ["one", "watch"]
"#;
    let err = parse_err(&format!("{GOOD}{VIDEO}{batch}"));
    assert!(err.contains("cases.both.batch: \"watch\" holds a video"), "{err}");
}
