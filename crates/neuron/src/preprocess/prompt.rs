//! Prompt → input_ids, mirroring what `Qwen3VLProcessor` does with the harness's messages:
//! render the checkpoint's chat template, expand each `<|image_pad|>` to the image's
//! t·h·w / merge² tokens, tokenize with the checkpoint's `tokenizer.json`.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use tokenizers::Tokenizer;

use crate::vision::positions::Grid;

/// The placeholder the chat template emits for each image.
pub const IMAGE_PAD: &str = "<|image_pad|>";

/// The checkpoint's chat template and tokenizer.
pub struct PromptProcessor {
    template: String,
    tokenizer: Tokenizer,
    merge: usize,
}

impl PromptProcessor {
    /// Loads `tokenizer.json` and the chat template, from `chat_template.jinja` (the layout of
    /// the published Qwen3.5/3.6 repositories) or the `chat_template` field of
    /// `tokenizer_config.json` (older layout).
    pub fn from_dir(dir: &Path, merge: usize) -> Result<Self> {
        let tokenizer_path = dir.join("tokenizer.json");
        ensure!(
            tokenizer_path.is_file(),
            "{}: the checkpoint has no tokenizer.json; copy it from the model's repository snapshot",
            tokenizer_path.display()
        );
        let tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| anyhow::anyhow!("{}: cannot load the tokenizer: {e}", tokenizer_path.display()))?;
        Ok(PromptProcessor { template: chat_template(dir)?, tokenizer, merge })
    }

    /// Renders the chat template for one user message holding `n_images` images followed by
    /// the prompt text, with the generation prompt — the messages `script/capture.py` builds.
    pub fn render(&self, n_images: usize, prompt: &str) -> Result<String> {
        let mut env = Environment::new();
        // transformers compiles chat templates with trim_blocks and lstrip_blocks.
        env.set_syntax(minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build()?);
        env.add_function("raise_exception", |msg: String| -> Result<String, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
        });
        // Qwen's templates call Python string methods (`content.startswith(…)`, `.split`,
        // `.lstrip`), which transformers' Jinja2 sandbox allows.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_template("chat", &self.template).context("compiling the chat template")?;
        let mut content: Vec<minijinja::Value> = (0..n_images).map(|_| context! { type => "image" }).collect();
        content.push(context! { type => "text", text => prompt });
        let messages = vec![context! { role => "user", content => content }];
        let rendered = env
            .get_template("chat")?
            .render(context! { messages => messages, add_generation_prompt => true })
            .context("rendering the chat template")?;
        Ok(rendered)
    }

    /// How many `<|image_pad|>` tokens each image takes: t·h·w / merge².
    pub fn image_token_counts(&self, grids: &[Grid]) -> Vec<usize> {
        grids.iter().map(|g| g.patches() / (self.merge * self.merge)).collect()
    }

    /// Expands each `<|image_pad|>` of a rendered prompt to its image's token count, in order,
    /// and tokenizes. The number of placeholders must equal the number of images.
    pub fn input_ids(&self, rendered: &str, counts: &[usize]) -> Result<Vec<u32>> {
        let placeholders = rendered.matches(IMAGE_PAD).count();
        ensure!(
            placeholders == counts.len(),
            "the prompt has {placeholders} image placeholder(s) ({IMAGE_PAD}) but {} image(s) were given",
            counts.len()
        );
        let mut expanded = String::with_capacity(rendered.len());
        let mut pieces = rendered.split(IMAGE_PAD);
        expanded.push_str(pieces.next().unwrap_or_default());
        for (&tokens, rest) in counts.iter().zip(pieces) {
            expanded.push_str(&IMAGE_PAD.repeat(tokens));
            expanded.push_str(rest);
        }
        let encoding =
            self.tokenizer.encode(expanded, true).map_err(|e| anyhow::anyhow!("tokenizing the prompt: {e}"))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Token ids → text, as `processor.decode(ids, skip_special_tokens=True)` (the chat
    /// template's markers and an end-of-turn token are left out).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true).map_err(|e| anyhow::anyhow!("decoding token ids {ids:?}: {e}"))
    }
}

fn chat_template(dir: &Path) -> Result<String> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return std::fs::read_to_string(&jinja).with_context(|| format!("reading {}", jinja.display()));
    }
    let config = dir.join("tokenizer_config.json");
    if config.is_file() {
        let text = std::fs::read_to_string(&config).with_context(|| format!("reading {}", config.display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", config.display()))?;
        if let Some(t) = json.get("chat_template").and_then(|t| t.as_str()) {
            return Ok(t.to_owned());
        }
    }
    bail!(
        "{}: the checkpoint has no chat template (neither chat_template.jinja nor a \"chat_template\" in \
         tokenizer_config.json); copy chat_template.jinja from the model's repository snapshot",
        dir.display()
    )
}
