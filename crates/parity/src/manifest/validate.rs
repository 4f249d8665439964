//! The checks a manifest must pass beyond its schema: references between entries (a case's
//! model and images exist), paths that stay inside the repository, finite tolerances, settings
//! that only make sense together. Each error names the entry, and its line through the span
//! the entry was read from ([`super::At`]).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Component, Path};

use contract::ComputeDtype;

use super::schema::{At, ContentSpec, Manifest, MessageSpec, Request, RoleSpec, ToleranceSpec};

/// A check that failed: what, and where in the text.
pub(super) struct Invalid {
    message: String,
    span: Option<Range<usize>>,
}

impl Invalid {
    fn at<T>(entry: &At<T>, message: String) -> Invalid {
        let span = entry.span();
        Invalid { message, span: (span != (0..0)).then_some(span) }
    }

    /// The message, prefixed by the line of the entry when it was read from `text`.
    pub(super) fn with_line(self, text: &str) -> String {
        match self.span {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}: {}", self.message)
            }
            None => self.message,
        }
    }
}

impl Manifest {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        check_tolerance("tolerance", &self.tolerance).map_err(|m| Invalid::at(&self.tolerance, m))?;
        if !(self.calibration.k.is_finite() && self.calibration.k > 0.0) {
            let message =
                format!("calibration.k = {}: a positive multiple of the reference's noise", self.calibration.k);
            return Err(Invalid::at(&self.calibration, message));
        }
        for (name, model) in &self.models {
            self.validate_model(name, model).map_err(|message| Invalid::at(model, message))?;
        }
        for (name, image) in &self.images {
            check_relative_path(&format!("images.{name}.path"), &image.path).map_err(|m| Invalid::at(image, m))?;
        }
        for (name, video) in &self.videos {
            check_relative_path(&format!("videos.{name}.path"), &video.path).map_err(|m| Invalid::at(video, m))?;
            if let Some(fps) = video.fps {
                if !(fps.is_finite() && fps > 0.0) {
                    let message = format!("videos.{name}.fps = {fps}: a positive number of frames per second");
                    return Err(Invalid::at(video, message));
                }
            }
        }
        for (name, case) in &self.cases {
            self.validate_case(name, case)?;
        }
        Ok(())
    }

    fn validate_model(&self, name: &str, model: &super::ModelEntry) -> Result<(), String> {
        match (&model.path, &model.weights_env) {
            (Some(path), None) => check_relative_path(&format!("models.\"{name}\".path"), path)?,
            (None, Some(var)) => {
                if var.is_empty() || !var.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') {
                    return Err(format!(
                        "models.\"{name}\".weights_env = \"{var}\": an environment variable name (A-Z, 0-9, _)"
                    ));
                }
                if !model.files.is_empty() {
                    return Err(format!(
                        "models.\"{name}\".files: a checkpoint outside the repository has no recorded files; \
                         its config.json digest goes in config_sha256"
                    ));
                }
            }
            _ => {
                return Err(format!(
                    "models.\"{name}\": give exactly one of `path` (a checkpoint in the repository) or \
                     `weights_env` (the variable naming a folder outside it)"
                ))
            }
        }
        if let Some(t) = &model.tolerance {
            check_tolerance(&format!("models.\"{name}\".tolerance"), t)?;
        }
        for file in model.files.keys() {
            check_relative_path(&format!("models.\"{name}\".files.\"{file}\""), file)?;
        }
        Ok(())
    }

    fn validate_case(&self, name: &str, case: &At<super::Case>) -> Result<(), Invalid> {
        let at = format!("cases.{name}");
        let whole = |message: String| Invalid::at(case, message);
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(whole(format!("{at}: a case name becomes a folder name; use letters, digits, '-', '_', '.'")));
        }
        if !self.models.contains_key(case.model.as_str()) {
            return Err(Invalid::at(
                &case.model,
                format!("{at}.model: unknown model \"{}\"; known models: {}", *case.model, join_keys(&self.models)),
            ));
        }
        for image in &case.images {
            if !self.images.contains_key(image.as_str()) {
                return Err(Invalid::at(
                    image,
                    format!("{at}.images: unknown image \"{}\"; known images: {}", **image, join_keys(&self.images)),
                ));
            }
        }
        self.validate_request(&at, case).map_err(whole)?;
        if let Some(t) = &case.tolerance {
            check_tolerance(&format!("{at}.tolerance"), t).map_err(whole)?;
        }
        for (pattern, t) in &case.tap_tolerance {
            check_tolerance(&format!("{at}.tap_tolerance.\"{pattern}\""), t).map_err(whole)?;
        }
        for (pattern, k) in &case.tap_k {
            if case.dtype == ComputeDtype::F32 {
                return Err(whole(format!(
                    "{at}.tap_k: only a bf16 case is calibrated; an f32 case uses tap_tolerance"
                )));
            }
            if !(k.is_finite() && *k > 0.0) {
                return Err(whole(format!(
                    "{at}.tap_k.\"{pattern}\" = {k}: a positive multiple of the reference's noise"
                )));
            }
        }
        match (case.generate, case.gen_top_k) {
            (Some(0), _) => Err(whole(format!("{at}.generate = 0: generate at least one token, or omit it"))),
            (None, Some(_)) => Err(whole(format!("{at}.gen_top_k: only a case that sets `generate` has steps"))),
            (_, Some(0)) => Err(whole(format!("{at}.gen_top_k = 0: keep at least one id per step"))),
            _ => Ok(()),
        }?;
        for (key, dump) in &case.dumps {
            if key.tap.dtype() != dump.dtype {
                return Err(whole(format!(
                    "{at}.dumps.\"{key}\": dtype {} but the contract says {}",
                    dump.dtype,
                    key.tap.dtype()
                )));
            }
            if let Some(part) = key.part {
                if !case.parts().contains(&part) {
                    return Err(whole(format!("{at}.dumps.\"{key}\": the case has no part {part}")));
                }
            }
        }
        Ok(())
    }

    /// One request per case, its messages well formed, its batch members real single cases of
    /// the same model and dtype.
    fn validate_request(&self, at: &str, case: &super::Case) -> Result<(), String> {
        let Some(request) = case.request() else {
            return Err(format!(
                "{at}: give exactly one request: `prompt` (with `images`), `messages`, `turns`, `messages` with \
                 `prefix_cache`, or `batch`"
            ));
        };
        if !case.images.is_empty() && !matches!(request, Request::Single { .. }) {
            return Err(format!(
                "{at}.images: images of a conversation go in its messages, as {{ image = \"name\" }} items"
            ));
        }
        if !case.chat_template_kwargs.is_empty() && matches!(request, Request::Single { .. } | Request::Batch { .. }) {
            return Err(format!(
                "{at}.chat_template_kwargs: only a case with `messages`, `turns` or `prefix_cache` renders a \
                 conversation of its own"
            ));
        }
        let check_images = |where_: &str, messages: &[MessageSpec]| -> Result<(), String> {
            for name in messages.iter().flat_map(MessageSpec::images) {
                if !self.images.contains_key(name) {
                    return Err(format!(
                        "{at}.{where_}: unknown image \"{name}\"; known images: {}",
                        join_keys(&self.images)
                    ));
                }
            }
            Ok(())
        };
        for video in case.video_names() {
            if !self.videos.contains_key(video) {
                return Err(format!("{at}: unknown video \"{video}\"; known videos: {}", join_keys(&self.videos)));
            }
        }
        if !case.video_names().is_empty() && !matches!(request, Request::Conversation { .. }) {
            return Err(format!(
                "{at}: {{ video = … }} items are replayed in a conversation of one request (`messages`) only; turns \
                 and cached prefixes do not carry videos yet"
            ));
        }
        match request {
            Request::Single { .. } => {}
            Request::Conversation { messages } => {
                check_images("messages", messages)?;
                check_conversation(&format!("{at}.messages"), messages, true)?;
            }
            Request::Turns { turns } => {
                if turns.is_empty() {
                    return Err(format!("{at}.turns: give at least one turn"));
                }
                if case.generate.is_none() {
                    return Err(format!(
                        "{at}.generate: a conversation fed turn by turn generates each turn's reply; set `generate`"
                    ));
                }
                for (i, turn) in turns.iter().enumerate() {
                    let where_ = format!("turns[{i}]");
                    if turn.is_empty() {
                        return Err(format!(
                            "{at}.{where_}: an empty turn; give each turn at least one user message, or remove it"
                        ));
                    }
                    check_images(&where_, turn)?;
                    if turn.iter().any(|m| m.role == RoleSpec::Assistant) {
                        return Err(format!(
                            "{at}.{where_}: the assistant's replies of a conversation fed turn by turn are generated; \
                             give only system and user messages"
                        ));
                    }
                    check_conversation(&format!("{at}.{where_}"), turn, true)?;
                }
            }
            Request::PrefixCache { prefix, suffixes } => {
                check_images("messages", prefix)?;
                check_conversation(&format!("{at}.messages"), prefix, false)?;
                if suffixes.len() < 2 {
                    return Err(format!("{at}.prefix_cache: give at least two suffixes that share the cached prefix"));
                }
                for (i, suffix) in suffixes.iter().enumerate() {
                    let where_ = format!("prefix_cache[{i}]");
                    if suffix.is_empty() {
                        return Err(format!("{at}.{where_}: an empty suffix; give it at least one user message"));
                    }
                    check_images(&where_, suffix)?;
                    check_conversation(&format!("{at}.{where_}"), suffix, true)?;
                }
            }
            Request::Batch { members } => self.validate_batch(at, case, members)?,
        }
        Ok(())
    }

    fn validate_batch(&self, at: &str, case: &super::Case, members: &[At<String>]) -> Result<(), String> {
        if members.len() < 2 {
            return Err(format!("{at}.batch: a batch needs at least two cases"));
        }
        for name in members {
            let Some(member) = self.cases.get(name.as_str()) else {
                return Err(format!(
                    "{at}.batch: unknown case \"{}\"; known cases: {}",
                    name.as_str(),
                    join_keys(&self.cases)
                ));
            };
            if !matches!(member.request(), Some(Request::Single { .. } | Request::Conversation { .. })) {
                return Err(format!(
                    "{at}.batch: \"{}\" is not a single request (a prompt or a conversation); a batch holds those only",
                    name.as_str()
                ));
            }
            if !member.video_names().is_empty() {
                return Err(format!(
                    "{at}.batch: \"{}\" holds a video; a batch holds requests with text and images only",
                    name.as_str()
                ));
            }
            if member.model.as_str() != case.model.as_str() {
                return Err(format!(
                    "{at}.batch: \"{}\" runs model \"{}\" but the batch runs \"{}\"; a batch runs one model: \
                     set the batch's model to its members' or batch cases of one model",
                    name.as_str(),
                    member.model.as_str(),
                    case.model.as_str()
                ));
            }
            if member.dtype != case.dtype {
                return Err(format!(
                    "{at}.batch: \"{}\" computes in {} but the batch in {}; a batch computes in one dtype: \
                     set the batch's dtype to its members'",
                    name.as_str(),
                    member.dtype,
                    case.dtype
                ));
            }
            if member.loader != case.loader {
                return Err(format!(
                    "{at}.batch: \"{}\" opens its images with another loader than the batch; give the batch its \
                     members' loader",
                    name.as_str()
                ));
            }
        }
        Ok(())
    }
}

/// A conversation a chat server would accept: a system message only first, no empty one, and
/// (when it asks for a reply, `open`) not ending with the assistant's own turn.
fn check_conversation(at: &str, messages: &[MessageSpec], open: bool) -> Result<(), String> {
    if messages.is_empty() {
        return Err(format!("{at}: an empty conversation; give at least one message"));
    }
    for (i, message) in messages.iter().enumerate() {
        if message.role == RoleSpec::System && i > 0 {
            return Err(format!("{at}[{i}]: a system message comes first, before any other message"));
        }
        let empty = match &message.content {
            ContentSpec::Text(text) => text.is_empty(),
            ContentSpec::Items(items) => items.is_empty(),
        };
        if empty {
            return Err(format!("{at}[{i}]: an empty message; give it text, an image or a video, or remove it"));
        }
    }
    if open && messages.last().is_some_and(|m| m.role == RoleSpec::Assistant) {
        return Err(format!(
            "{at}: the conversation ends with the assistant's turn but asks for the assistant's reply (the generation \
             prompt); end it with a user message, or drop the last assistant message"
        ));
    }
    Ok(())
}

pub(super) fn join_keys<V>(map: &BTreeMap<String, V>) -> String {
    if map.is_empty() {
        return "(none)".into();
    }
    map.keys().map(|k| format!("\"{k}\"")).collect::<Vec<_>>().join(", ")
}

fn check_tolerance(at: &str, t: &ToleranceSpec) -> Result<(), String> {
    for (name, v) in [("atol", t.atol), ("rtol", t.rtol)] {
        if !v.is_finite() || v < 0.0 {
            return Err(format!("{at}.{name} = {v}: a tolerance must be a finite number >= 0"));
        }
    }
    Ok(())
}

/// Paths in the manifest must stay inside the repository: relative, without `..`.
fn check_relative_path(at: &str, path: &str) -> Result<(), String> {
    let p = Path::new(path);
    let escapes = p.is_absolute() || p.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    if path.is_empty() || escapes {
        return Err(format!(
            "{at} = \"{path}\": paths must be relative to the manifest and stay inside it (no '..', not absolute)"
        ));
    }
    Ok(())
}
