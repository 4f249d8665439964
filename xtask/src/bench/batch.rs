//! `cargo xtask bench --batch 1,4,8`: batched greedy decoding, Rust against transformers.
//!
//! A server answers several requests at once so that a decode step reads each weight once for
//! all of them: decode is bound by memory bandwidth (the single-row stage reads 11 GB of f32
//! weights per token on the stand-in), so a batch of B should yield nearly B times the tokens
//! per second until the arithmetic catches up. Each side decodes, per batch size, a left-padded
//! batch of text prompts cut from the bench's prompt (row r the first ⌈W·(B − r)/B⌉ of its W
//! words, so the rows differ in length and the batch has padding; a batch of one is the prompt
//! alone, unpadded, as transformers mishandles a padded batch of one, PR #46773), prefilled
//! untimed, then `--decode-steps` greedy steps timed from the prefill's logits to the last
//! step's. This module passes the sizes on, reads what each side measured and writes the
//! report's section: tokens per second (median and min–max over the runs), the ratio of the two
//! sides, Rust's batch-B throughput over its batch-1, and the bytes one row's cache holds.

use std::num::NonZeroUsize;

use serde::Deserialize;

/// What one side measured for one batch size (`batches` in its JSON).
#[derive(Deserialize)]
pub struct BatchRun {
    /// Rows in the batch (B).
    pub rows: usize,
    /// Each row's prompt tokens before padding: both sides must cut and tokenize alike.
    pub row_tokens: Vec<usize>,
    pub decode_steps: usize,
    /// B × steps ÷ decode time, per timed run.
    pub tokens_per_second: Throughput,
    /// Each row's greedy tokens (the prefill's, then one per step), which both sides must share.
    pub tokens: Vec<Vec<u32>>,
    /// One row's cache after the prefill and the steps (Rust side only).
    #[serde(default)]
    pub cache_bytes_per_row: Option<CacheBytes>,
}

#[derive(Deserialize)]
pub struct Throughput {
    pub samples: Vec<f64>,
    pub median: f64,
}

impl Throughput {
    /// "12.34 (12.01–12.80)": the median and the spread over the runs.
    fn describe(&self) -> String {
        let min = self.samples.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{:.2} ({min:.2}–{max:.2})", self.median)
    }
}

/// One row's cache in bytes, from its tensors' shapes and dtype.
#[derive(Deserialize, Clone, Copy)]
pub struct CacheBytes {
    /// Keys and values of the full-attention layers (every position of the padded row).
    pub kv: u64,
    /// Conv and recurrent states of the Gated DeltaNet layers (fixed in size).
    pub linear: u64,
}

/// The sides' `--batch` argument (`1,4,8`); none when no size is asked for, so that the bench
/// runs exactly as without the flag.
pub fn side_args(sizes: &[NonZeroUsize]) -> Vec<String> {
    if sizes.is_empty() {
        return Vec::new();
    }
    let list: Vec<String> = sizes.iter().map(ToString::to_string).collect();
    vec!["--batch".into(), list.join(",")]
}

/// The report's section on batched decoding: one row per batch size, then what does not agree
/// between the sides, then every run's throughput.
pub fn render(rust: &[BatchRun], python: &[BatchRun]) -> String {
    let mut s = String::new();
    let steps = rust.first().map_or(0, |b| b.decode_steps);
    s.push_str(&format!(
        "\n## Batched decode\n\nPer batch size, a left-padded batch of text prompts cut from the prompt's words (row r keeps \
         ⌈W·(B − r)/B⌉ of its W words; a batch of one is the prompt alone, unpadded), prefilled untimed, then {steps} \
         greedy steps timed from the prefill's logits to the last step's. Tokens per second = B × steps ÷ that time, \
         median (min–max) over the runs. The cache per row is Rust's after the prefill and the steps: keys and values \
         of the full-attention layers over the padded length, plus the Gated DeltaNet layers' conv and recurrent \
         states.\n\n\
         | batch | prompt tokens per row | Rust tokens/s | transformers tokens/s | Rust ÷ transformers | Rust ÷ Rust at \
         batch 1 | Rust cache per row (KV + DeltaNet states) |\n|---|---|---|---|---|---|---|\n",
    ));
    let single = rust.iter().find(|b| b.rows == 1).map(|b| b.tokens_per_second.median);
    let mut notes = Vec::new();
    for (r, p) in rust.iter().zip(python) {
        let (rt, pt) = (&r.tokens_per_second, &p.tokens_per_second);
        let scaling = single.map_or("–".into(), |one| format!("{:.2}×", rt.median / one));
        let cache = r.cache_bytes_per_row.map_or("–".into(), |c| {
            format!(
                "{:.2} MB ({:.2} + {:.2})",
                (c.kv + c.linear) as f64 / 1e6,
                c.kv as f64 / 1e6,
                c.linear as f64 / 1e6
            )
        });
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.2}× | {scaling} | {cache} |\n",
            r.rows,
            row_lengths(&r.row_tokens),
            rt.describe(),
            pt.describe(),
            rt.median / pt.median,
        ));
        if (r.rows, &r.row_tokens, r.decode_steps) != (p.rows, &p.row_tokens, p.decode_steps) {
            notes.push(format!(
                "**Batch {}: the sides did not run the same batch (Rust rows {:?}, transformers {:?}, steps {} and {}); \
                 its ratio is not comparable.**",
                r.rows, r.row_tokens, p.row_tokens, r.decode_steps, p.decode_steps
            ));
        } else if r.tokens != p.tokens {
            let row = r.tokens.iter().zip(&p.tokens).position(|(a, b)| a != b).unwrap_or(0);
            notes.push(format!(
                "**Batch {}: the greedy tokens differ, first in row {row}: Rust {:?}, transformers {:?}.**",
                r.rows,
                r.tokens.get(row).map_or(&[][..], Vec::as_slice),
                p.tokens.get(row).map_or(&[][..], Vec::as_slice),
            ));
        }
    }
    if rust.len() != python.len() {
        notes.push(format!(
            "**Rust ran {} batch sizes, transformers {}; only the first {} are compared.**",
            rust.len(),
            python.len(),
            rust.len().min(python.len())
        ));
    }
    if single.is_none() && !rust.is_empty() {
        notes.push("Batch 1 was not run, so there is no scaling against it (add 1 to --batch).".into());
    }
    for note in notes {
        s.push_str(&format!("\n{note}\n"));
    }
    s.push_str("\nTokens per second per run:\n");
    for (r, p) in rust.iter().zip(python) {
        s.push_str(&format!(
            "- batch {}: Rust {:?}, transformers {:?}\n",
            r.rows,
            rounded(&r.tokens_per_second.samples),
            rounded(&p.tokens_per_second.samples)
        ));
    }
    s
}

/// "77, 58, 37 → 77": each row's prompt tokens and the padded length, or the one row's.
fn row_lengths(rows: &[usize]) -> String {
    let listed: Vec<String> = rows.iter().map(ToString::to_string).collect();
    match rows {
        [_] => listed.join(""),
        _ => format!("{} → {}", listed.join(", "), rows.iter().max().unwrap_or(&0)),
    }
}

fn rounded(samples: &[f64]) -> Vec<f64> {
    samples.iter().map(|x| (x * 100.0).round() / 100.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rows: usize, samples: &[f64], tokens: u32, cache: Option<(u64, u64)>) -> BatchRun {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        BatchRun {
            rows,
            row_tokens: (0..rows).map(|r| 40 - 10 * r).collect(),
            decode_steps: 8,
            tokens_per_second: Throughput { samples: samples.to_vec(), median: sorted[sorted.len() / 2] },
            tokens: vec![vec![tokens; 9]; rows],
            cache_bytes_per_row: cache.map(|(kv, linear)| CacheBytes { kv, linear }),
        }
    }

    #[test]
    fn the_section_gives_throughput_spread_ratios_and_the_cache_per_row() {
        let rust = [
            run(1, &[2.0, 2.5, 2.4], 7, Some((500_000, 9_900_000))),
            run(4, &[7.0, 7.4, 7.2], 7, Some((600_000, 9_900_000))),
        ];
        let python = [run(1, &[2.2, 2.0, 2.1], 7, None), run(4, &[6.0, 5.0, 5.5], 8, None)];
        let section = render(&rust, &python);
        for expected in [
            "| 1 | 40 | 2.40 (2.00–2.50) | 2.10 (2.00–2.20) | 1.14× | 1.00× | 10.40 MB (0.50 + 9.90) |",
            "| 4 | 40, 30, 20, 10 → 40 | 7.20 (7.00–7.40) | 5.50 (5.00–6.00) | 1.31× | 3.00× | 10.50 MB (0.60 + 9.90) |",
            "**Batch 4: the greedy tokens differ, first in row 0: Rust [7, 7, 7, 7, 7, 7, 7, 7, 7], transformers [8,",
            "- batch 4: Rust [7.0, 7.4, 7.2], transformers [6.0, 5.0, 5.5]",
        ] {
            assert!(section.contains(expected), "the section lacks {expected:?}:\n{section}");
        }
        assert!(!section.contains("Batch 1: the greedy"), "batch 1 agrees:\n{section}");
    }

    #[test]
    fn without_batch_1_there_is_no_scaling_and_the_report_says_why() {
        let section = render(&[run(4, &[7.0], 7, None)], &[run(4, &[6.0], 7, None)]);
        assert!(section.contains("| 1.17× | – | – |"), "{section}");
        assert!(section.contains("add 1 to --batch"), "{section}");
    }

    #[test]
    fn the_sides_get_the_flag_only_when_sizes_are_given() {
        let sizes: Vec<NonZeroUsize> = [1, 4, 8].into_iter().filter_map(NonZeroUsize::new).collect();
        assert_eq!(side_args(&sizes), ["--batch", "1,4,8"]);
        assert!(side_args(&[]).is_empty(), "no flag: the bench runs as before");
    }
}
