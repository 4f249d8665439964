//! A conversation → input_ids, mirroring `processor.apply_chat_template(messages, ...)` and
//! `Qwen3VLProcessor.__call__`: render the checkpoint's chat template over the messages, expand
//! each `<|image_pad|>` to the image's t·h·w / merge² tokens and each `<|video_pad|>` to its
//! video's text (timestamps and framed tokens, [`crate::preprocess::video::processor`]), in one
//! pass in the order they appear (`ProcessorMixin.get_text_with_replacements`), tokenize with the
//! checkpoint's `tokenizer.json`.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use tokenizers::Tokenizer;

use crate::preprocess::video::processor::VIDEO_PAD;
use crate::vision::positions::Grid;

/// The placeholder the chat template emits for each image.
pub const IMAGE_PAD: &str = "<|image_pad|>";

/// Who speaks a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The name the chat template sees (`message.role`).
    pub fn name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One item of a message's content list, as `apply_chat_template` receives it.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// `{"type": "text", "text": …}`.
    Text(String),
    /// `{"type": "image"}`: the image file, read in the order the items appear.
    Image(PathBuf),
    /// `{"type": "video"}`: an MP4 file, or a folder of PNG frames played at `fps` frames per
    /// second (a file's rate comes from its container: `fps` must be `None`).
    Video { path: PathBuf, fps: Option<f64> },
}

/// A message's content: a plain string, or a list of items (the template sees which).
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    Text(String),
    Items(Vec<Item>),
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Content,
}

impl Message {
    /// A message whose content is a list of items.
    pub fn items(role: Role, items: Vec<Item>) -> Message {
        Message { role, content: Content::Items(items) }
    }

    fn item_list(&self) -> &[Item] {
        match &self.content {
            Content::Items(items) => items.as_slice(),
            Content::Text(_) => &[],
        }
    }

    /// The image files of the message, in order.
    pub fn images(&self) -> impl Iterator<Item = &Path> {
        self.item_list().iter().filter_map(|item| match item {
            Item::Image(path) => Some(path.as_path()),
            _ => None,
        })
    }

    /// The videos of the message (file or frame folder, and a folder's frame rate), in order.
    pub fn videos(&self) -> impl Iterator<Item = (&Path, Option<f64>)> {
        self.item_list().iter().filter_map(|item| match item {
            Item::Video { path, fps } => Some((path.as_path(), *fps)),
            _ => None,
        })
    }
}

/// A conversation and the chat template's keyword arguments (`chat_template_kwargs`, such as
/// `enable_thinking`), as `apply_chat_template(messages, **kwargs)` receives them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conversation {
    pub messages: Vec<Message>,
    pub template_args: serde_json::Map<String, serde_json::Value>,
}

impl Conversation {
    /// One user message: the images, then the prompt text (what a single-request case sends).
    pub fn single(images: &[&Path], prompt: &str) -> Conversation {
        let mut items: Vec<Item> = images.iter().map(|p| Item::Image(p.to_path_buf())).collect();
        items.push(Item::Text(prompt.to_owned()));
        Conversation { messages: vec![Message::items(Role::User, items)], template_args: Default::default() }
    }

    /// Every image file, in the order the template meets them.
    pub fn images(&self) -> Vec<&Path> {
        self.messages.iter().flat_map(Message::images).collect()
    }

    /// Every video, in the order the template meets them.
    pub fn videos(&self) -> Vec<(&Path, Option<f64>)> {
        self.messages.iter().flat_map(Message::videos).collect()
    }
}

/// Whether the rendering ends with the generation prompt (`add_generation_prompt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerationPrompt {
    /// The assistant turn is opened: a request to answer.
    Open,
    /// The conversation as it stands (a prefix to cache, or a finished history).
    Closed,
}

/// The checkpoint's chat template and tokenizer.
pub struct PromptProcessor {
    template: String,
    tokenizer: Tokenizer,
    merge: usize,
    /// The special tokens of `tokenizer_config.json` by name (`eos_token`, `pad_token`, …), which
    /// transformers hands the template as variables.
    special_tokens: Vec<(String, String)>,
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
        Ok(PromptProcessor { template: chat_template(dir)?, tokenizer, merge, special_tokens: special_tokens(dir)? })
    }

    /// Renders the chat template for one user message holding `n_images` images followed by
    /// the prompt text, with the generation prompt — the messages `script/capture.py` builds for
    /// a single request.
    pub fn render(&self, n_images: usize, prompt: &str) -> Result<String> {
        let images = vec![Path::new(""); n_images];
        self.render_conversation(&Conversation::single(&images, prompt), GenerationPrompt::Open)
    }

    /// Renders the chat template over a conversation as `apply_chat_template(messages,
    /// add_generation_prompt=…, **template_args)` does (the template also sees the tokenizer's
    /// special tokens, as transformers passes them; a template argument of the same name wins).
    pub fn render_conversation(&self, conversation: &Conversation, prompt: GenerationPrompt) -> Result<String> {
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
        let messages: Vec<minijinja::Value> = conversation.messages.iter().map(message_value).collect();
        let mut vars: std::collections::BTreeMap<String, minijinja::Value> =
            self.special_tokens.iter().map(|(k, v)| (k.clone(), minijinja::Value::from(v.as_str()))).collect();
        for (key, value) in &conversation.template_args {
            vars.insert(key.clone(), minijinja::Value::from(minijinja::value::Serde(value)));
        }
        vars.insert("messages".into(), minijinja::Value::from(messages));
        vars.insert("add_generation_prompt".into(), minijinja::Value::from(prompt == GenerationPrompt::Open));
        let rendered = env.get_template("chat")?.render(vars).context("rendering the chat template")?;
        Ok(rendered)
    }

    /// The token ids of a rendered text without any image expansion (a text that holds no image
    /// placeholder, or whose placeholders are already expanded).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.tokenizer.encode(text, true).map_err(|e| anyhow::anyhow!("tokenizing the prompt: {e}"))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The id of a token of the vocabulary (`<|endoftext|>`), if it has one.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// The tokenizer's padding token (`pad_token` of `tokenizer_config.json`), if it names one.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.special_tokens.iter().find(|(k, _)| k == "pad_token").and_then(|(_, t)| self.token_id(t))
    }

    /// How many `<|image_pad|>` tokens each image takes: t·h·w / merge².
    pub fn image_token_counts(&self, grids: &[Grid]) -> Vec<usize> {
        grids.iter().map(|g| g.patches() / (self.merge * self.merge)).collect()
    }

    /// Expands each `<|image_pad|>` of a rendered prompt to its image's token count, in order,
    /// and tokenizes. The number of placeholders must equal the number of images.
    pub fn input_ids(&self, rendered: &str, counts: &[usize]) -> Result<Vec<u32>> {
        self.input_ids_with_videos(rendered, counts, &[])
    }

    /// [`PromptProcessor::input_ids`] for a prompt with videos too: each `<|video_pad|>` becomes
    /// its video's text (`videos`, in order). Both kinds are replaced in one pass over the
    /// rendered text, so a video's own `<|video_pad|>` tokens are never taken for another's
    /// placeholder. The placeholders of each kind must match what was given, as the reference
    /// checks (`ProcessorMixin.validate_inputs`).
    pub fn input_ids_with_videos(&self, rendered: &str, counts: &[usize], videos: &[String]) -> Result<Vec<u32>> {
        self.tokenize(&expand_placeholders(rendered, counts, videos)?)
    }

    /// Token ids → text, as `processor.decode(ids, skip_special_tokens=True)` (the chat
    /// template's markers and an end-of-turn token are left out).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true).map_err(|e| anyhow::anyhow!("decoding token ids {ids:?}: {e}"))
    }
}

/// The rendered prompt with each `<|image_pad|>` repeated its image's token count and each
/// `<|video_pad|>` replaced by its video's text, in order (see
/// [`PromptProcessor::input_ids_with_videos`]).
pub fn expand_placeholders(rendered: &str, counts: &[usize], videos: &[String]) -> Result<String> {
    let placeholders = rendered.matches(IMAGE_PAD).count();
    ensure!(
        placeholders == counts.len(),
        "the prompt has {placeholders} image placeholder(s) ({IMAGE_PAD}) but {} image(s) were given",
        counts.len()
    );
    let video_placeholders = rendered.matches(VIDEO_PAD).count();
    ensure!(
        video_placeholders == videos.len(),
        "the prompt has {video_placeholders} video placeholder(s) ({VIDEO_PAD}) but {} video(s) were given",
        videos.len()
    );
    let mut expanded = String::with_capacity(rendered.len());
    let (mut images, mut clips) = (counts.iter(), videos.iter());
    let mut rest = rendered;
    loop {
        let image_at = rest.find(IMAGE_PAD);
        let video_at = rest.find(VIDEO_PAD);
        match (image_at, video_at) {
            (Some(i), v) if v.is_none_or(|v| i < v) => {
                expanded.push_str(&rest[..i]);
                expanded.push_str(&IMAGE_PAD.repeat(*images.next().expect("counted above")));
                rest = &rest[i + IMAGE_PAD.len()..];
            }
            (_, Some(v)) => {
                expanded.push_str(&rest[..v]);
                expanded.push_str(clips.next().expect("counted above"));
                rest = &rest[v + VIDEO_PAD.len()..];
            }
            (None, None) => break,
            (Some(_), None) => unreachable!("the first arm takes an image with no video after it"),
        }
    }
    expanded.push_str(rest);
    Ok(expanded)
}

/// A message as the template sees it: `{role, content}`, the content a string or a list of
/// `{type: "text", text}` / `{type: "image"}` / `{type: "video"}` items.
fn message_value(message: &Message) -> minijinja::Value {
    let content = match &message.content {
        Content::Text(text) => minijinja::Value::from(text.as_str()),
        Content::Items(items) => minijinja::Value::from(
            items
                .iter()
                .map(|item| match item {
                    Item::Text(text) => context! { type => "text", text => text },
                    Item::Image(_) => context! { type => "image" },
                    Item::Video { .. } => context! { type => "video" },
                })
                .collect::<Vec<_>>(),
        ),
    };
    context! { role => message.role.name(), content => content }
}

/// `tokenizer.special_tokens_map`: the named special tokens of `tokenizer_config.json` that are
/// set (`SPECIAL_TOKENS_ATTRIBUTES`: bos, eos, unk, sep, pad, cls, mask); none when the file is absent.
fn special_tokens(dir: &Path) -> Result<Vec<(String, String)>> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let named = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];
    Ok(named
        .iter()
        .filter_map(|&name| {
            let token = json.get(name)?;
            // A token is a string, or an AddedToken object with its `content`.
            let text = token.as_str().or_else(|| token.get("content")?.as_str())?;
            Some((name.to_owned(), text.to_owned()))
        })
        .collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_and_video_placeholders_are_replaced_in_one_pass_in_their_order() {
        let rendered = "a<|video_pad|>b<|image_pad|>c<|video_pad|>d";
        let videos =
            ["<0.5 seconds>[<|video_pad|><|video_pad|>]".to_owned(), "<1.0 seconds>[<|video_pad|>]".to_owned()];
        let expanded = expand_placeholders(rendered, &[3], &videos).unwrap();
        // The first video's own pads are not taken for the second video's placeholder.
        assert_eq!(
            expanded,
            "a<0.5 seconds>[<|video_pad|><|video_pad|>]b<|image_pad|><|image_pad|><|image_pad|>c<1.0 seconds>[<|video_pad|>]d"
        );
    }

    #[test]
    fn a_video_placeholder_without_its_video_or_a_video_without_a_placeholder_is_refused() {
        let err = expand_placeholders("x<|video_pad|>", &[], &[]).unwrap_err().to_string();
        assert!(err.contains("1 video placeholder(s)") && err.contains("0 video(s)"), "{err}");
        let err = expand_placeholders("x", &[], &["<0.0 seconds>".to_owned()]).unwrap_err().to_string();
        assert!(err.contains("0 video placeholder(s)") && err.contains("1 video(s)"), "{err}");
    }
}
