//! The fields of `fixtures.toml`, as serde reads them (`deny_unknown_fields` everywhere: a
//! misspelt key is an error that names its line). Tap names and patterns are parsed here, as
//! they are read, into [`Tap`]s and [`TapPattern`]s; entries whose references are checked
//! across the file keep their place ([`At`]) so that [`super::validate`] can name the line.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Deref, Range};
use std::path::PathBuf;

use contract::{known_taps, ArrayDtype, ComputeDtype, Family, Tap};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::compare::{Noise, Tolerance};

/// A value of `fixtures.toml` and the byte range it was read from (`toml::Spanned`), so that a
/// check made after parsing can still name the line. Reads as the value itself.
#[derive(Debug, Clone)]
pub struct At<T> {
    value: T,
    span: Range<usize>,
}

impl<T> At<T> {
    /// A value that was not read from a file (tests, edits): it has no line.
    pub fn new(value: T) -> At<T> {
        At { value, span: 0..0 }
    }

    /// Where in the manifest's text the value was read from.
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }
}

impl<T: Default> Default for At<T> {
    fn default() -> Self {
        At::new(T::default())
    }
}

impl<T> Deref for At<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> std::ops::DerefMut for At<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T: fmt::Display> fmt::Display for At<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}

impl<T: PartialEq> PartialEq for At<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for At<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = toml::Spanned::<T>::deserialize(deserializer)?;
        Ok(At { span: spanned.span(), value: spanned.into_inner() })
    }
}

impl<T: Serialize> Serialize for At<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(serializer)
    }
}

/// The whole manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The reference the dumps came from; written by capture.
    #[serde(default)]
    pub reference: Option<Reference>,
    /// Tolerance for every comparison that nothing narrower overrides.
    #[serde(default)]
    pub tolerance: At<ToleranceSpec>,
    /// The bf16 rule's default multiple of the reference's own noise (`[calibration] k`).
    #[serde(default)]
    pub calibration: At<CalibrationSpec>,
    pub models: BTreeMap<String, At<ModelEntry>>,
    #[serde(default)]
    pub images: BTreeMap<String, At<Image>>,
    #[serde(default)]
    pub videos: BTreeMap<String, At<Video>>,
    #[serde(default)]
    pub cases: BTreeMap<String, At<Case>>,
    /// The folder the manifest lives in: every path in it is relative to this.
    #[serde(skip)]
    pub root: PathBuf,
}

/// Versions of the reference stack and the digest of the harness that produced the dumps.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    pub transformers: String,
    pub torch: String,
    pub numpy: String,
    pub pillow: String,
    pub python: String,
    /// PyAV, the reference's video decoder (recorded since the first video case).
    #[serde(default)]
    pub av: Option<String>,
    /// torch threads used by the capture (results are bit-stable only for a fixed count).
    pub threads: u32,
    /// SHA-256 over `script/capture.py`, `script/uv.lock` and `script/pyproject.toml`.
    pub harness_sha256: String,
}

/// `atol`/`rtol` as written in the manifest.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ToleranceSpec {
    pub atol: f64,
    pub rtol: f64,
}

impl Default for ToleranceSpec {
    /// ARCHITECTURE.md: "Default `atol = rtol = 1e-3`".
    fn default() -> Self {
        ToleranceSpec { atol: 1e-3, rtol: 1e-3 }
    }
}

impl From<ToleranceSpec> for Tolerance {
    fn from(t: ToleranceSpec) -> Self {
        Tolerance { atol: t.atol, rtol: t.rtol }
    }
}

/// `[calibration]`: how many times the reference's own bf16-vs-f32 deviation a bf16 tap may
/// deviate (see [`crate::compare::Calibration`]); a case narrows it per tap with `tap_k`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CalibrationSpec {
    pub k: f64,
}

impl Default for CalibrationSpec {
    /// Without a `[calibration]` table: the port may deviate twice as much as the reference
    /// moves between bf16 and f32.
    fn default() -> Self {
        CalibrationSpec { k: 2.0 }
    }
}

/// A checkpoint in HuggingFace layout: inside the repository (`path`), or outside it in a
/// folder the user names (`weights_env`, or `--weights DIR`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Folder of the checkpoint, relative to the manifest.
    #[serde(default)]
    pub path: Option<String>,
    /// For a checkpoint outside the repository: the environment variable that names its
    /// folder (`--weights DIR` overrides it).
    #[serde(default)]
    pub weights_env: Option<String>,
    /// Where the checkpoint is published (`Qwen/Qwen3.6-27B`); informative.
    #[serde(default)]
    pub hf_repo: Option<String>,
    /// The published revision (commit) the dumps were captured from; written by capture.
    #[serde(default)]
    pub revision: Option<String>,
    /// SHA-256 of the checkpoint's `config.json` as of the capture; a checkpoint whose
    /// config differs is refused. Written by capture.
    #[serde(default)]
    pub config_sha256: Option<String>,
    /// Run layer by layer from the mapped checkpoint (one layer at a time), on both the Python
    /// and the Rust side.
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub description: Option<String>,
    /// The script (relative to the manifest) that writes this checkpoint from a fixed seed;
    /// only such models can be regenerated by `cargo xtask make-model`.
    #[serde(default)]
    pub generated_by: Option<String>,
    /// Arguments the generator takes after `--out DIR` (`["--kind", "moe"]`).
    #[serde(default)]
    pub generator_args: Vec<String>,
    /// The checkpoint's `model_type` (`"qwen3_5"`, the default, or `"qwen3_5_moe"`): a
    /// checkpoint of the other family is refused, naming both.
    #[serde(default)]
    pub model_type: Option<String>,
    /// Overrides the global tolerance for every case of this model.
    #[serde(default)]
    pub tolerance: Option<ToleranceSpec>,
    /// File name (inside `path`) → SHA-256; written by `cargo xtask make-model`.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

impl ModelEntry {
    /// Why an external checkpoint cannot be used: the flag and the variable that name it.
    pub fn absent_reason(&self, name: &str) -> String {
        let var = self.weights_env.as_deref().unwrap_or("(none)");
        let what = self.hf_repo.as_deref().map_or(String::new(), |r| format!(" (a local snapshot of {r})"));
        format!(
            "the checkpoint of {name} is not in the repository: pass --weights DIR or set {var} to its folder{what}"
        )
    }

    /// Whether the checkpoint lives outside the repository.
    pub fn is_external(&self) -> bool {
        self.path.is_none()
    }
}

/// One of the known images.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    pub path: String,
    /// Written by capture.
    #[serde(default)]
    pub sha256: Option<String>,
}

/// One of the known videos: an MP4 file (H.264), or a folder of PNG frames played at `fps`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Video {
    pub path: String,
    /// Frames per second of a folder of frames (a folder has no frame rate of its own); a video
    /// file's comes from its container and may not be given.
    #[serde(default)]
    pub fps: Option<f64>,
    /// Written by capture: the file's SHA-256, or for a folder the SHA-256 of its listing (each
    /// PNG's name and digest, in name order).
    #[serde(default)]
    pub sha256: Option<String>,
}

/// One captured case: a model and a request — one user message (`images` and `prompt`), a
/// conversation (`messages`), a conversation fed turn by turn (`turns`), a cached prefix
/// continued by several suffixes (`messages` and `prefix_cache`), or a left-padded batch of other
/// cases (`batch`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub model: At<String>,
    /// Image names (keys of `[images]`), placed before the prompt in one user message.
    #[serde(default)]
    pub images: Vec<At<String>>,
    /// The text of the one user message, after its images.
    #[serde(default)]
    pub prompt: Option<String>,
    /// A whole conversation instead of `images` + `prompt`: system, user and assistant messages
    /// whose content is a string or a list of `{ text = … }`, `{ image = … }` and `{ video = … }`
    /// items in any order. Rendered with the checkpoint's chat template, with the generation prompt.
    #[serde(default)]
    pub messages: Option<Vec<MessageSpec>>,
    /// Keyword arguments of the chat template (`enable_thinking = false`), for `messages`,
    /// `turns` and `prefix_cache`.
    #[serde(default)]
    pub chat_template_kwargs: BTreeMap<String, serde_json::Value>,
    /// A conversation fed turn by turn, as a chat server runs it: each turn's messages are
    /// appended, the whole conversation is prefilled on top of the cache of the turns before,
    /// `generate` tokens are generated greedily and become the assistant's reply in the history.
    #[serde(default)]
    pub turns: Option<Vec<Vec<MessageSpec>>>,
    /// With `messages` (the shared prefix, rendered without a generation prompt): the suffixes,
    /// each a list of messages continuing the prefix from a copy of its cache; each is checked
    /// against the reference's one-pass run of prefix + suffix.
    #[serde(default)]
    pub prefix_cache: Option<Vec<Vec<MessageSpec>>>,
    /// The names of other cases run as one left-padded batch (same model and dtype); the taps
    /// gain a leading batch axis, and each row is also compared with Rust's own run of its case.
    #[serde(default)]
    pub batch: Option<Vec<At<String>>>,
    /// How the reference opened the images (see [`ImageLoader`]). Rust preprocessing follows it.
    #[serde(default)]
    pub loader: ImageLoader,
    /// The dtype the reference and the port compute in: `"f32"` (the default) or `"bf16"`
    /// (weights as stored, `from_pretrained(dtype=torch.bfloat16)`). A bf16 case's float taps
    /// are judged by [`crate::compare::Calibration`], not by `tolerance`.
    #[serde(default)]
    pub dtype: ComputeDtype,
    /// For a bf16 case: per-tap multiples of the reference's noise (a tap name or a stem
    /// ending in `*`), overriding `[calibration] k`; each carries a comment with its cause.
    #[serde(default)]
    pub tap_k: BTreeMap<TapPattern, f64>,
    /// Overrides the model's tolerance for every tap of this case.
    #[serde(default)]
    pub tolerance: Option<ToleranceSpec>,
    /// Per-tap overrides: a tap name, or a stem ending in `*` (`"vision.block.*"`).
    #[serde(default)]
    pub tap_tolerance: BTreeMap<TapPattern, ToleranceSpec>,
    /// Which taps capture keeps (tap names or stems ending in `*`); all by default. Cases
    /// that exist to test one stage keep the fixtures small this way.
    #[serde(default)]
    pub taps: Option<Vec<TapPattern>>,
    /// Which rows of a tap capture keeps (tap pattern → `"first"` or `"last"` row of the
    /// leading axis: the first patch, the last position); whole taps by default. Keeps the
    /// dumps of a large model small. Taps without rows ([`Tap::has_rows`]) are always whole.
    #[serde(default)]
    pub rows: BTreeMap<TapPattern, RowPick>,
    /// Greedy generation: the reference also runs `generate(do_sample=False,
    /// max_new_tokens=N)` with its cache on, and the case gains the `cache.*` taps (the state
    /// after the prefill) and the `gen.*` taps (each step's logits and token), checked by the
    /// `decode-teacher-forced` and `generate` modes.
    #[serde(default)]
    pub generate: Option<usize>,
    /// With `generate`: keep the reference's top-k ids and logits of each step (`gen.top_ids`,
    /// `gen.top_logits`, [steps, k]) instead of whole rows of logits (`gen.logits`, [steps,
    /// vocab]): 4 steps of a 248 320-word vocabulary are 4 MB, their top 64 are 3 KB.
    #[serde(default)]
    pub gen_top_k: Option<usize>,
    /// Digest of everything the dumps depend on (model files, images, prompt, harness), as of
    /// the capture; written by capture, compared by `status` to find stale dumps.
    #[serde(default)]
    pub inputs_sha256: Option<String>,
    /// Tap (with its part, for a case of turns or suffixes) → recorded dump; written by capture.
    #[serde(default)]
    pub dumps: BTreeMap<DumpKey, Dump>,
}

/// One message of a case's conversation.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MessageSpec {
    pub role: RoleSpec,
    pub content: ContentSpec,
}

/// Who speaks a message.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RoleSpec {
    System,
    User,
    Assistant,
}

/// A message's content: a string, or a list of items.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum ContentSpec {
    Text(String),
    Items(Vec<ItemSpec>),
}

/// One item of a content list: `{ text = "…" }`, `{ image = "name" }` (a key of `[images]`) or
/// `{ video = "name" }` (a key of `[videos]`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged, deny_unknown_fields)]
pub enum ItemSpec {
    Text { text: String },
    Image { image: String },
    Video { video: String },
}

impl MessageSpec {
    fn items(&self) -> &[ItemSpec] {
        match &self.content {
            ContentSpec::Items(items) => items.as_slice(),
            ContentSpec::Text(_) => &[],
        }
    }

    /// The names of the images the message holds, in order.
    pub fn images(&self) -> impl Iterator<Item = &str> {
        self.items().iter().filter_map(|item| match item {
            ItemSpec::Image { image } => Some(image.as_str()),
            _ => None,
        })
    }

    /// The names of the videos the message holds, in order.
    pub fn videos(&self) -> impl Iterator<Item = &str> {
        self.items().iter().filter_map(|item| match item {
            ItemSpec::Video { video } => Some(video.as_str()),
            _ => None,
        })
    }
}

/// What a case asks for (see [`Case`]); one form per case, checked when the manifest loads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Request<'c> {
    /// One user message: the images, then the prompt.
    Single { images: &'c [At<String>], prompt: &'c str },
    /// A whole conversation.
    Conversation { messages: &'c [MessageSpec] },
    /// A conversation fed turn by turn on a continued cache.
    Turns { turns: &'c [Vec<MessageSpec>] },
    /// A prefix cached once and continued by each suffix.
    PrefixCache { prefix: &'c [MessageSpec], suffixes: &'c [Vec<MessageSpec>] },
    /// Other cases run as one left-padded batch.
    Batch { members: &'c [At<String>] },
}

impl Case {
    /// The case's request; `None` when its fields give none or several (the manifest refuses
    /// such a case when it loads).
    pub fn request(&self) -> Option<Request<'_>> {
        match (&self.prompt, &self.messages, &self.turns, &self.prefix_cache, &self.batch) {
            (Some(prompt), None, None, None, None) => Some(Request::Single { images: &self.images, prompt }),
            (None, Some(messages), None, None, None) => Some(Request::Conversation { messages }),
            (None, None, Some(turns), None, None) => Some(Request::Turns { turns }),
            (None, Some(prefix), None, Some(suffixes), None) => Some(Request::PrefixCache { prefix, suffixes }),
            (None, None, None, None, Some(members)) => Some(Request::Batch { members }),
            _ => None,
        }
    }

    /// The parts a case is checked in: each turn, or each suffix; none for a one-pass case.
    pub fn parts(&self) -> Vec<Part> {
        match self.request() {
            Some(Request::Turns { turns }) => (0..turns.len()).map(Part::Turn).collect(),
            Some(Request::PrefixCache { suffixes, .. }) => (0..suffixes.len()).map(Part::Suffix).collect(),
            _ => Vec::new(),
        }
    }

    /// The names of the images the case's request holds, in order (a batch's are its members',
    /// which the manifest looks up: see `CaseRef::image_paths`).
    pub fn image_names(&self) -> Vec<&str> {
        fn messages(m: &[MessageSpec]) -> Vec<&str> {
            m.iter().flat_map(MessageSpec::images).collect()
        }
        match self.request() {
            Some(Request::Single { images, .. }) => images.iter().map(|i| i.as_str()).collect(),
            Some(Request::Conversation { messages: m }) => messages(m),
            Some(Request::Turns { turns }) => turns.iter().flat_map(|t| messages(t)).collect(),
            Some(Request::PrefixCache { prefix, suffixes }) => {
                messages(prefix).into_iter().chain(suffixes.iter().flat_map(|s| messages(s))).collect()
            }
            Some(Request::Batch { .. }) | None => Vec::new(),
        }
    }

    /// The names of the videos the case's messages hold, in order (only a conversation of one
    /// request may hold videos: the manifest refuses them elsewhere).
    pub fn video_names(&self) -> Vec<&str> {
        fn all(m: &[MessageSpec]) -> Vec<&str> {
            m.iter().flat_map(MessageSpec::videos).collect()
        }
        match self.request() {
            Some(Request::Conversation { messages }) => all(messages),
            Some(Request::Turns { turns }) => turns.iter().flat_map(|t| all(t)).collect(),
            Some(Request::PrefixCache { prefix, suffixes }) => {
                all(prefix).into_iter().chain(suffixes.iter().flat_map(|s| all(s))).collect()
            }
            Some(Request::Single { .. } | Request::Batch { .. }) | None => Vec::new(),
        }
    }
}

/// One part of a case checked in parts: a turn of a conversation fed turn by turn, or a suffix
/// continuing a cached prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    Turn(usize),
    Suffix(usize),
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Turn(i) => write!(f, "turn.{i}"),
            Part::Suffix(i) => write!(f, "suffix.{i}"),
        }
    }
}

impl Part {
    fn parse(text: &str) -> Option<Part> {
        let (kind, index) = text.split_once('.')?;
        let canonical = index == "0" || (!index.starts_with('0') && index.chars().all(|c| c.is_ascii_digit()));
        let index: usize = if canonical { index.parse().ok()? } else { return None };
        match kind {
            "turn" => Some(Part::Turn(index)),
            "suffix" => Some(Part::Suffix(index)),
            _ => None,
        }
    }
}

/// The key of a recorded dump: a tap, for a case checked in parts with its part first
/// (`"turn.1/lm.logits_last"`). Sorts by part (the whole case first), then in pipeline order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DumpKey {
    pub part: Option<Part>,
    pub tap: Tap,
}

impl DumpKey {
    /// A tap of the whole case.
    pub fn whole(tap: Tap) -> DumpKey {
        DumpKey { part: None, tap }
    }

    /// A tap of one part.
    pub fn of(part: Part, tap: Tap) -> DumpKey {
        DumpKey { part: Some(part), tap }
    }
}

impl From<Tap> for DumpKey {
    fn from(tap: Tap) -> DumpKey {
        DumpKey::whole(tap)
    }
}

impl fmt::Display for DumpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.part {
            Some(part) => write!(f, "{part}/{}", self.tap),
            None => write!(f, "{}", self.tap),
        }
    }
}

impl<'de> Deserialize<'de> for DumpKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let (part, tap) = match text.split_once('/') {
            Some((part, tap)) => {
                let part = Part::parse(part).ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "unknown part \"{part}\" in \"{text}\"; parts are turn.{{i}} and suffix.{{i}}"
                    ))
                })?;
                (Some(part), tap)
            }
            None => (None, text.as_str()),
        };
        let tap = Tap::parse(tap)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown tap \"{tap}\"; known taps: {}", known_taps())))?;
        Ok(DumpKey { part, tap })
    }
}

/// How the reference turned an image file into RGB pixels (a case's `loader`).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ImageLoader {
    /// `PIL.Image.open`, then `image_transforms.convert_to_rgb`: EXIF orientation ignored,
    /// transparency composited onto white.
    #[default]
    Processor,
    /// `image_utils.load_image`: `ImageOps.exif_transpose`, then `convert("RGB")` (alpha
    /// dropped, not composited).
    LoadImage,
}

impl ImageLoader {
    pub fn is_processor(&self) -> bool {
        *self == ImageLoader::Processor
    }

    /// The name used in `fixtures.toml` and passed to the harness.
    pub fn name(self) -> &'static str {
        match self {
            ImageLoader::Processor => "processor",
            ImageLoader::LoadImage => "load_image",
        }
    }
}

/// One row of a tap's leading axis.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RowPick {
    First,
    Last,
}

impl RowPick {
    /// The row index in a leading axis of `len` rows.
    pub fn index(self, len: usize) -> usize {
        match self {
            RowPick::First => 0,
            RowPick::Last => len.saturating_sub(1),
        }
    }
}

/// What capture recorded for one `.npy` dump.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Dump {
    pub sha256: String,
    pub shape: Vec<usize>,
    pub dtype: ArrayDtype,
    /// A float tap of a bf16 case: the reference's own deviation between its bf16 and f32
    /// runs (of the kept rows), measured by the same capture.
    #[serde(default)]
    pub noise: Option<Noise>,
}

/// A selection of taps in the manifest: a tap name, or a stem ending in `*` that some tap of
/// the contract starts with (`"vision.*"`, `"vision.block.*"`, `"*"`). Parsed as it is read;
/// sorts as its text does, so maps keyed by patterns serialise in the order they always did.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TapPattern {
    text: String,
}

impl TapPattern {
    /// Parses a pattern; `None` when it selects no tap of the contract.
    pub fn parse(text: &str) -> Option<TapPattern> {
        let ok = match text.strip_suffix('*') {
            Some(stem) => stem_selects_some_tap(stem),
            None => Tap::parse(text).is_some(),
        };
        ok.then(|| TapPattern { text: text.to_owned() })
    }

    /// Whether the pattern selects `tap`.
    pub fn matches(&self, tap: Tap) -> bool {
        let name = tap.to_string();
        match self.text.strip_suffix('*') {
            Some(stem) => name.starts_with(stem),
            None => self.text == name,
        }
    }

    /// How specific the pattern is: of several that match, the longest wins.
    pub fn specificity(&self) -> usize {
        self.text.len()
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// "vision.*", "vision.block.*", "lm.layer.*", "*": the stem must lie in a family and be a
/// prefix of some tap name.
fn stem_selects_some_tap(stem: &str) -> bool {
    Family::ALL.iter().any(|f| stem.starts_with(f.prefix()) || f.prefix().starts_with(stem))
        && (stem.ends_with('.') || Tap::parse(&format!("{stem}0")).is_some() || stem.is_empty())
}

impl fmt::Display for TapPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for TapPattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for TapPattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        TapPattern::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown tap \"{text}\"; known taps: {}", known_taps())))
    }
}
