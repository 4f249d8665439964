//! The model side of generation on the checked-in iteration model, by properties that need no
//! reference: a prompt prefilled in one pass, in chunks, or one token at a time ends with the
//! same logits and the same cache; a decode step is the prefill of the prompt with the token
//! appended (so its position is the prompt's largest + 1, even after an image); greedy
//! generation is a forward pass over everything before each step.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use contract::{ComputeDtype, Stage, Tap};
use neuron::config::Config;
use neuron::model::{argmax, EmbeddedPrompt, Model, Residency};
use neuron::taps::Taps;
use neuron::text::cache::Cache;
use neuron::vision::positions::Grid;
use neuron::vision::VisionPositions;

/// Logits and every cache state agree within this.
const TOLERANCE: f32 = 1e-5;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = workspace().join("fixtures/models/tiny-qwen3.6-27b");
        Model::load(&dir, &Config::from_dir(&dir).unwrap(), Residency::Resident, ComputeDtype::F32).unwrap()
    })
}

fn dump(case: &str, tap: Tap) -> parity::array::Array {
    parity::npy::read_npy(&workspace().join(parity::manifest::Manifest::dump_path(case, tap))).unwrap()
}

fn ids(case: &str) -> Vec<u32> {
    dump(case, Stage::InputIds.tap()).as_i64().unwrap().iter().map(|&i| i as u32).collect()
}

/// A case's request: token ids, and pixel values with their vision positions if it has an image.
struct Request {
    case: &'static str,
    ids: Vec<u32>,
    pixels: Option<(Tensor, VisionPositions)>,
}

impl Request {
    fn text_only() -> Request {
        Request { case: "text-only", ids: ids("text-only"), pixels: None }
    }

    fn image(case: &'static str) -> Request {
        let pixels = dump(case, Stage::PixelValues.tap());
        let pixels = Tensor::from_slice(pixels.as_f32().unwrap(), pixels.shape.as_slice(), &Device::Cpu).unwrap();
        let thw = dump(case, Stage::ImageGridThw.tap());
        let grids: Vec<Grid> = thw
            .as_i64()
            .unwrap()
            .chunks(3)
            .map(|g| Grid { t: g[0] as usize, h: g[1] as usize, w: g[2] as usize })
            .collect();
        let positions = VisionPositions::new(&model().config.vision_config, &grids);
        Request { case, ids: ids(case), pixels: Some((pixels, positions)) }
    }

    fn pixels(&self) -> Option<(&Tensor, &VisionPositions)> {
        self.pixels.as_ref().map(|(t, p)| (t, p))
    }

    fn prompt(&self) -> EmbeddedPrompt {
        model().prompt(&self.ids, self.pixels(), &mut Taps::disabled()).unwrap()
    }

    fn grids(&self) -> &[Grid] {
        self.pixels.as_ref().map_or(&[][..], |(_, p)| &p.grids)
    }
}

/// The logits of the last position and the cache after a prefill.
struct Prefilled {
    logits: Tensor,
    cache: Cache,
}

/// Prefills `prompt` in chunks ending at each of `splits` (sorted, inside the prompt) and at its end.
fn prefill_in_chunks(prompt: &EmbeddedPrompt, splits: &[usize]) -> Prefilled {
    let mut cache = model().new_cache();
    let mut logits = None;
    let mut start = 0;
    for &end in splits.iter().chain(std::iter::once(&prompt.len())) {
        logits = Some(model().prefill_chunk(prompt, start..end, &mut cache, &mut Taps::disabled()).unwrap());
        start = end;
    }
    Prefilled { logits: logits.unwrap(), cache }
}

/// The largest |a − b| and its index; shapes must match.
fn max_abs_diff(a: &Tensor, b: &Tensor) -> (f32, Vec<usize>) {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let flat = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    let mut worst = (0f32, 0usize);
    for (i, (x, y)) in flat(a).iter().zip(&flat(b)).enumerate() {
        let d = (x - y).abs();
        if d > worst.0 || d.is_nan() {
            worst = (d, i);
        }
    }
    (worst.0, parity::array::unravel_index(a.dims(), worst.1))
}

/// Asserts that `actual` has the logits and every cache state of `expected` within
/// [`TOLERANCE`], naming the state, the largest |Δ| and where; prints the agreement.
fn assert_same_prefill(label: &str, expected: &Prefilled, actual: &Prefilled) {
    let (e, a) = (&expected.cache, &actual.cache);
    assert_eq!((a.len(), a.rope_delta()), (e.len(), e.rope_delta()), "{label}: cache length and rope delta");
    let mut report = Vec::new();
    let mut failures = Vec::new();
    let mut check = |name: &str, x: &Tensor, y: &Tensor| {
        assert_eq!(y.dims(), x.dims(), "{label}: shape of {name}");
        let (diff, at) = max_abs_diff(x, y);
        report.push(format!("{name} {diff:.1e}"));
        if diff > TOLERANCE || diff.is_nan() {
            failures.push(format!("{name}: max |Δ| = {diff:e} at {at:?}"));
        }
    };
    check("logits", &expected.logits, &actual.logits);
    let (es, as_) = (e.states(), a.states());
    let taps = |s: &[(Tap, Tensor)]| s.iter().map(|(t, _)| *t).collect::<Vec<_>>();
    assert_eq!(taps(&as_), taps(&es), "{label}: the cache states present");
    for ((tap, x), (_, y)) in es.iter().zip(&as_) {
        check(&tap.to_string(), x, y);
    }
    println!("{label}: {}", report.join(", "));
    assert!(failures.is_empty(), "{label} differs from one pass beyond {TOLERANCE:e}:\n{}", failures.join("\n"));
}

fn one_pass(prompt: &EmbeddedPrompt) -> Prefilled {
    prefill_in_chunks(prompt, &[])
}

/// xorshift64*: seeded split points.
fn random_splits(seed: u64, len: usize, count: usize) -> Vec<usize> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut splits: Vec<usize> = (0..count)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            1 + (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % (len - 1)
        })
        .collect();
    splits.sort_unstable();
    splits.dedup();
    splits
}

fn assert_chunkings_agree(request: &Request, chunkings: &[(String, Vec<usize>)]) {
    let prompt = request.prompt();
    let whole = one_pass(&prompt);
    for (label, splits) in chunkings {
        assert_same_prefill(&format!("{}, {label}", request.case), &whole, &prefill_in_chunks(&prompt, splits));
    }
}

fn standard_chunkings(len: usize, seed: u64) -> Vec<(String, Vec<usize>)> {
    let mut chunkings: Vec<(String, Vec<usize>)> =
        [1, 63, 64, 65].into_iter().filter(|&s| s < len).map(|s| (format!("split at {s}"), vec![s])).collect();
    if len > 64 {
        chunkings.push(("chunks of 64".into(), (64..len).step_by(64).collect()));
    }
    for i in 0..3 {
        let splits = random_splits(seed + i, len, 1 + 3 * i as usize);
        chunkings.push((format!("split at {splits:?}"), splits));
    }
    chunkings.push(("one token at a time".into(), (1..len).collect()));
    chunkings
}

#[test]
fn a_text_prompt_prefilled_in_chunks_or_one_token_at_a_time_ends_with_the_logits_and_cache_of_one_pass() {
    let request = Request::text_only();
    assert_eq!(request.ids.len(), 261, "the text-only prompt");
    assert_chunkings_agree(&request, &standard_chunkings(request.ids.len(), 7));
}

#[test]
fn an_image_prompt_prefilled_in_chunks_or_one_token_at_a_time_ends_with_the_logits_and_cache_of_one_pass() {
    let request = Request::image("chelsea");
    let image_token = model().config.image_token_id;
    let first_image = request.ids.iter().position(|&t| t == image_token).unwrap();
    let image_len = request.ids.iter().filter(|&&t| t == image_token).count();
    let mut chunkings = standard_chunkings(request.ids.len(), 11);
    chunkings.push(("split inside the image".into(), vec![first_image + image_len / 2]));
    chunkings.push(("split around the image".into(), vec![first_image, first_image + image_len]));
    assert_chunkings_agree(&request, &chunkings);
}

/// A decode step is the prefill of the prompt with the token appended: its position is
/// `cache length + rope delta` on all axes, the prompt's largest position + 1.
fn assert_decode_steps_equal_prefills_of_the_longer_prompt(request: &Request, steps: usize) {
    let prompt = request.prompt();
    let max = prompt.positions.iter().flatten().copied().max().unwrap();
    let mut cache = model().new_cache();
    let mut logits = model().prefill(&request.ids, request.pixels(), &mut cache, &mut Taps::disabled()).unwrap();
    assert_eq!(cache.rope_delta(), max + 1 - prompt.len() as i64, "rope delta: largest position + 1 − length");
    assert_eq!(cache.next_positions(1), [vec![max + 1], vec![max + 1], vec![max + 1]], "the first decode position");
    let mut ids = request.ids.clone();
    for step in 0..steps {
        let token = argmax(&logits.to_vec1::<f32>().unwrap()).unwrap();
        logits = model().decode_step(token, &mut cache).unwrap();
        ids.push(token);
        let longer = model().positions(&ids, request.grids()).unwrap();
        assert_eq!(longer.clone().map(|row| row[row.len() - 1]), [max + 1 + step as i64; 3], "position of step {step}");
        let mut expected = model().new_cache();
        let expected_logits = model().prefill(&ids, request.pixels(), &mut expected, &mut Taps::disabled()).unwrap();
        assert_same_prefill(
            &format!("{}, decode step {step}", request.case),
            &Prefilled { logits: expected_logits, cache: expected },
            &Prefilled { logits: logits.clone(), cache: cache.clone() },
        );
    }
}

#[test]
fn decode_steps_after_an_image_prompt_resume_at_its_largest_position_plus_one() {
    let request = Request::image("chelsea");
    let prompt = request.prompt();
    assert!(
        prompt.rope_delta < 0,
        "an image's tokens share positions: rope delta {} should be negative",
        prompt.rope_delta
    );
    assert_decode_steps_equal_prefills_of_the_longer_prompt(&request, 3);
}

#[test]
fn decode_steps_after_a_text_prompt_resume_at_its_length() {
    let request = Request::text_only();
    assert_eq!(request.prompt().rope_delta, 0, "text positions are the token indices");
    assert_decode_steps_equal_prefills_of_the_longer_prompt(&request, 3);
}

#[test]
fn greedy_generation_takes_the_argmax_of_a_forward_pass_over_everything_before_each_step() {
    let request = Request::image("chelsea");
    let mut taps = Taps::recording();
    let generated = model().generate_greedy(&request.ids, request.pixels(), 4, &[], &mut taps).unwrap();
    assert_eq!((generated.tokens.len(), generated.logits.len()), (4, 4), "tokens and logits of 4 steps");
    let mut ids = request.ids.clone();
    for (step, (&token, logits)) in generated.tokens.iter().zip(&generated.logits).enumerate() {
        let forward = model().forward(&ids, request.pixels(), &mut Taps::disabled()).unwrap();
        let (diff, at) = max_abs_diff(&forward, logits);
        assert!(diff <= TOLERANCE, "step {step}: max |generation − forward| of the logits = {diff:e} at {at:?}");
        assert_eq!(Some(token), argmax(&logits.to_vec1::<f32>().unwrap()), "step {step}: the token is the argmax");
        ids.push(token);
    }
    let recorded = taps.get(Stage::GenLogits.tap()).expect("gen.logits is recorded");
    assert_eq!(recorded.dims(), [4, model().config.text_config.vocab_size], "gen.logits [steps, vocab]");
    let tokens: Vec<i64> = taps.get(Stage::GenTokens.tap()).expect("gen.tokens is recorded").to_vec1().unwrap();
    assert_eq!(tokens, generated.tokens.iter().map(|&t| t as i64).collect::<Vec<_>>(), "gen.tokens");
    assert!(
        taps.get(Stage::CacheKey.at(3)).is_some() && taps.get(Stage::LmLogitsLast.tap()).is_some(),
        "the prefill's taps"
    );
}

#[test]
fn greedy_generation_stops_at_an_eos_token_which_it_keeps_or_after_max_new_tokens() {
    let request = Request::text_only();
    let generate = |max: usize, eos: &[u32]| {
        model().generate_greedy(&request.ids, None, max, eos, &mut Taps::disabled()).unwrap().tokens
    };
    let free = generate(5, &[]);
    assert_eq!(free.len(), 5, "without EOS, max_new_tokens tokens: {free:?}");
    let eos = free[2];
    let first = free.iter().position(|&t| t == eos).unwrap();
    assert_eq!(generate(5, &[1023, eos]), &free[..=first], "generation stops at the first EOS ({eos}) and keeps it");
    assert_eq!(generate(2, &[]), &free[..2], "two tokens");
    assert!(generate(0, &[]).is_empty(), "no tokens for max_new_tokens = 0");
}

#[test]
fn a_chunk_out_of_order_or_past_the_prompt_is_an_error_naming_the_tokens_and_cache() {
    let prompt = Request::text_only().prompt();
    let mut cache = model().new_cache();
    let err = model().prefill_chunk(&prompt, 5..10, &mut cache, &mut Taps::disabled()).unwrap_err().to_string();
    assert!(err.contains("5..10") && err.contains("261-token") && err.contains("0 tokens"), "{err}");
    model().prefill_chunk(&prompt, 0..260, &mut cache, &mut Taps::disabled()).unwrap();
    let err = model().prefill_chunk(&prompt, 260..262, &mut cache, &mut Taps::disabled()).unwrap_err().to_string();
    assert!(err.contains("260..262"), "{err}");
    let err = model().decode_step(5, &mut model().new_cache()).unwrap_err().to_string();
    assert!(err.contains("empty"), "{err}");
}

/// What `examples/generate.rs` prints, from the image file and the prompt text through Rust
/// preprocessing, is transformers' greedy text: the tokens `generate` chose (recorded in the
/// chelsea case) decoded with the checkpoint's tokenizer, special tokens left out.
#[test]
fn the_generate_example_writes_transformers_greedy_text_for_chelsea() {
    let dir = workspace().join("fixtures/models/tiny-qwen3.6-27b");
    let processor = neuron::preprocess::Processor::from_dir(&dir).unwrap();
    let expected: Vec<u32> =
        dump("chelsea", Stage::GenTokens.tap()).as_i64().unwrap().iter().map(|&t| t as u32).collect();
    let image = workspace().join("fixtures/images/chelsea.png");
    let mut seen = Vec::new();
    let started = std::time::Instant::now();
    let mut first_token_at = 0.0;
    let generated = neuron::generate::generate(
        model(),
        &processor,
        &[image.as_path()],
        "Describe this image in one sentence.",
        expected.len(),
        |step, token| {
            if step == 0 {
                first_token_at = started.elapsed().as_secs_f64();
            }
            seen.push((step, token));
        },
    )
    .unwrap();
    let wall = started.elapsed().as_secs_f64();
    // The prefill's time ends at the first token, the decode's at the last: both fit in the
    // call, and the prefill's in the time to the first token.
    let (prefill, decode) = (generated.prefill_seconds, generated.decode_seconds);
    assert!(prefill > 0.0 && prefill <= first_token_at, "prefill {prefill} s, first token after {first_token_at} s");
    assert!(decode > 0.0 && prefill + decode <= wall, "prefill {prefill} s + decode {decode} s in a {wall} s call");
    let first_difference = generated.tokens.iter().zip(&expected).position(|(a, e)| a != e);
    assert_eq!(generated.tokens, expected, "greedy tokens differ from transformers' from step {first_difference:?} on");
    let expected_text = processor.prompt.decode(&expected).unwrap();
    assert_eq!(generated.text, expected_text, "the decoded text");
    assert!(!generated.text.trim().is_empty(), "8 tokens of text decode to something");
    let steps: Vec<usize> = seen.iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, (0..expected.len()).collect::<Vec<_>>(), "the progress callback sees every step once, in order");
    assert_eq!(generated.prompt_tokens, ids("chelsea").len(), "prompt tokens counted");
}
