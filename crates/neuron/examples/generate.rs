//! Runs the model as a user would: image and video files and a prompt in, greedy text out, with
//! the prefill and decode speeds (`--video clip.mp4`, or `--video frames/ --video-fps 2` for a
//! folder of PNG frames).
//!
//! ```sh
//! cargo run --release --example generate -- --model fixtures/models/tiny-qwen3.6-27b \
//!     --image fixtures/images/chelsea.png --prompt "Describe this image in one sentence." \
//!     --max-new-tokens 16
//! ```
//!
//! The text goes to stdout, a progress line and the speeds to stderr. `--stream` reads one
//! layer at a time from the mapped checkpoint (for a 27B checkpoint on an ordinary machine);
//! `--dtype bf16` computes in bf16.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use neuron::config::Config;
use neuron::model::{Model, Residency};
use neuron::preprocess::{Conversation, Item, Message, Processor, Role};

#[derive(Parser)]
#[command(about = "Greedy generation with the neuron Qwen3.5 / Qwen3.6 model")]
struct Args {
    /// The checkpoint folder (config.json, *.safetensors, tokenizer.json, chat template,
    /// preprocessor_config.json).
    #[arg(long)]
    model: PathBuf,
    /// Image files, placed before the prompt in one user message, in order.
    #[arg(long = "image")]
    images: Vec<PathBuf>,
    /// Videos (MP4 files with H.264 video, or folders of PNG frames), after the images, in order.
    #[arg(long = "video")]
    videos: Vec<PathBuf>,
    /// The frame rate of the video folders (a file's comes from its container).
    #[arg(long)]
    video_fps: Option<f64>,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Stream the layers from the mapped checkpoint instead of holding them in memory.
    #[arg(long)]
    stream: bool,
    /// The compute dtype: f32, or bf16 as the reference runs with `dtype=torch.bfloat16`.
    #[arg(long, default_value = "f32")]
    dtype: neuron::ComputeDtype,
}

#[path = "common/allocator.rs"]
mod allocator;

fn main() -> Result<()> {
    allocator::keep_freed_pages();
    let args = Args::parse();
    let config = Config::from_dir(&args.model)?;
    let residency = if args.stream { Residency::Streamed } else { Residency::Resident };
    let model = Model::load(&args.model, &config, residency, args.dtype)?;
    let processor = Processor::from_dir(&args.model)?;
    let mut items: Vec<Item> = args.images.iter().map(|p| Item::Image(p.clone())).collect();
    for video in &args.videos {
        let fps = if video.is_dir() { args.video_fps } else { None };
        items.push(Item::Video { path: video.clone(), fps });
    }
    items.push(Item::Text(args.prompt.clone()));
    let conversation = Conversation { messages: vec![Message::items(Role::User, items)], ..Default::default() };

    let bar = indicatif::ProgressBar::new(args.max_new_tokens as u64);
    bar.set_style(indicatif::ProgressStyle::with_template("generating {bar:30} {pos}/{len} tokens {msg}")?);
    let generated =
        neuron::generate::generate_conversation(&model, &processor, &conversation, args.max_new_tokens, |_, t| {
            bar.set_message(format!("(last id {t})"));
            bar.inc(1);
        })?;
    bar.finish_and_clear();

    println!("{}", generated.text);
    let decode = generated.decode_tokens_per_second().map_or("-".into(), |r| format!("{r:.1} tokens/s"));
    eprintln!(
        "prefill: {} tokens in {:.3} s ({:.1} tokens/s); decode: {} tokens in {:.3} s ({decode})",
        generated.prompt_tokens,
        generated.prefill_seconds,
        generated.prefill_tokens_per_second(),
        generated.tokens.len().saturating_sub(1),
        generated.decode_seconds,
    );
    Ok(())
}
