//! Naming an element of a tap in model terms, for failure messages and reports ("image 1,
//! patch row 3, col 5 of the 8×8 grid, channel 7"; "token position 12 (id 613
//! "<|image_pad|>")"), and laying the per-patch error of an image tap out on each image's grid
//! for the report's heat maps.
//!
//! Pure functions over plain data: the image grids, the merge size, the patches' rotary
//! positions and the prompt's token ids and texts, so the model crate only hands these over
//! and a tap's [`Layout`] decides how its axes read. The walk over the images' rows exists
//! once, in [`Locator::images`], for both the names and the heat maps.

use crate::array::Array;
use crate::report::Heatmap;
use contract::{Layout, Stage, Tap};

/// What naming a place needs to know about one run, as plain data.
#[derive(Debug, Clone, Default)]
pub struct Locator<'a> {
    /// The (t, h, w) patch grid of each image, in prompt order, then of each video (the vision
    /// tower's rows: the images' call first, then the videos').
    pub grids: Vec<(usize, usize, usize)>,
    /// How many of `grids`, at the end, are videos.
    pub videos: usize,
    /// The (frames, height, width) of each video's decoded frames (`input.video_frames`).
    pub video_frames: Vec<(usize, usize, usize)>,
    /// The spatial merge size: a merged token covers `merge × merge` patches.
    pub merge: usize,
    /// The (row, col) rotary position of every patch, images one after the other.
    pub rotary: &'a [[u32; 2]],
    /// The prompt's token ids.
    pub input_ids: &'a [u32],
    /// The text of each token, when a tokenizer was at hand.
    pub token_texts: Option<&'a [String]>,
    /// For a batch whose taps are packed row after row (padding left out): each row's number of
    /// real tokens, so that a packed position is named by its row. Empty for one sequence.
    pub row_lengths: &'a [usize],
}

/// The rows one image (or video) occupies in a tap laid out on image grids, and the grid they
/// lie on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageRows {
    /// Which grid of the run (0-based): the images of the prompt, then its videos.
    pub image: usize,
    /// The image's first row in the tap.
    pub start: usize,
    /// How many rows the image has (patches, or merged tokens).
    pub count: usize,
    /// Rows of the grid: patch rows, or block rows for merged tokens.
    pub grid_h: usize,
    /// Columns of the grid: patch columns, or block columns for merged tokens.
    pub grid_w: usize,
    /// Frames (temporal patches) of the grid: 1 for an image.
    pub frames: usize,
}

impl Locator<'_> {
    /// The rows of each image in a tap of `layout`, in order; empty unless the layout lies on
    /// the images' grids (per patch, per merged token).
    pub fn images(&self, layout: Layout) -> Vec<ImageRows> {
        // A merged token stands for a block of merge × merge patches.
        let (unit, merge) = match layout {
            Layout::PerPatch => (1, 1),
            Layout::PerMergedToken => (self.merge * self.merge, self.merge),
            _ => return Vec::new(),
        };
        let mut start = 0;
        let mut images = Vec::new();
        for (image, &(t, h, w)) in self.grids.iter().enumerate() {
            let (Some(count), Some(grid_h), Some(grid_w)) =
                ((t * h * w).checked_div(unit), h.checked_div(merge), w.checked_div(merge))
            else {
                return Vec::new();
            };
            images.push(ImageRows { image, start, count, grid_h, grid_w, frames: t });
            start += count;
        }
        images
    }

    /// The image of row `row` of a tap of `layout` and the (row, col) cell of its grid where
    /// the row belongs; `None` for a row past the images or a layout off the image grids.
    pub fn cell(&self, layout: Layout, row: usize) -> Option<(ImageRows, usize, usize)> {
        let image = self.images(layout).into_iter().find(|i| row >= i.start && row < i.start + i.count)?;
        let (r, c) = self.cell_in(layout, &image, row)?;
        Some((image, r, c))
    }

    /// The grid cell of a row known to belong to `image`.
    fn cell_in(&self, layout: Layout, image: &ImageRows, row: usize) -> Option<(usize, usize)> {
        match layout {
            // Patches come in the order the vision tower gives them; their rotary position
            // is where they sit on the patch grid.
            Layout::PerPatch => self.rotary.get(row).map(|&[r, c]| (r as usize, c as usize)),
            // Merged tokens come block by block, row-major over the block grid, frame after frame.
            Layout::PerMergedToken => {
                let block = (row - image.start) % (image.grid_h * image.grid_w).max(1);
                Some((block.checked_div(image.grid_w)?, block % image.grid_w))
            }
            _ => None,
        }
    }

    /// How many image tokens the prompt has: the merged tokens of every image.
    pub fn image_tokens(&self) -> usize {
        let images = self.grids.len().saturating_sub(self.videos);
        self.images(Layout::PerMergedToken).iter().take(images).map(|i| i.count).sum()
    }

    /// How many video tokens the prompt has: the merged tokens of every frame of every video.
    pub fn video_tokens(&self) -> usize {
        let images = self.grids.len().saturating_sub(self.videos);
        self.images(Layout::PerMergedToken).iter().skip(images).map(|i| i.count).sum()
    }

    /// `image 1`, or `video 0, frame 2` for a row of a video's grid (a frame's rows cover its
    /// grid once).
    fn grid_name(&self, grid: &ImageRows, row: usize) -> String {
        let images = self.grids.len().saturating_sub(self.videos);
        if grid.image < images {
            return format!("image {}", grid.image);
        }
        let per_frame = (grid.grid_h * grid.grid_w).max(1);
        format!("video {}, frame {}", grid.image - images, (row - grid.start) / per_frame)
    }

    /// `video 0, frame 3, pixel row 5, col 7, channel G` for row `row` of `input.video_frames`.
    fn video_pixel(&self, row: usize, channel: Option<usize>) -> Option<String> {
        let mut start = 0;
        for (video, &(frames, h, w)) in self.video_frames.iter().enumerate() {
            let count = frames * h * w;
            if row < start + count {
                let within = row - start;
                let (frame, y, x) = (within / (h * w), within % (h * w) / w, within % w);
                let channel = channel.map(|c| format!(", channel {}", ["R", "G", "B"].get(c).unwrap_or(&"?")));
                return Some(format!(
                    "video {video}, frame {frame}, pixel row {y}, col {x}{}",
                    channel.unwrap_or_default()
                ));
            }
            start += count;
        }
        None
    }

    /// `{noun} 12` of one sequence (`token position 12`); `row 1, {noun} 5` for the position of a
    /// packed batch that falls in its second row.
    pub fn position(&self, noun: &str, position: usize) -> String {
        let mut start = 0;
        for (row, &len) in self.row_lengths.iter().enumerate() {
            if position < start + len {
                return format!("row {row}, {noun} {}", position - start);
            }
            start += len;
        }
        format!("{noun} {position}")
    }

    /// `id 613 "<|image_pad|>"` for a token position (`id 613` without token texts).
    pub fn token(&self, position: usize) -> Option<String> {
        let id = self.input_ids.get(position)?;
        Some(match self.token_texts.and_then(|t| t.get(position)) {
            Some(text) => format!("id {id} {text:?}"),
            None => format!("id {id}"),
        })
    }

    /// Names the element at `index` of `tap` in model terms: the image and the patch or merged
    /// token, the token position, the cache layer and head, the generation step. `None` when
    /// the tap's axes name no place (the grid rows, the last logits) or the index lies outside
    /// what the run has.
    pub fn locate(&self, tap: Tap, index: &[usize]) -> Option<String> {
        let row = *index.first()?;
        // A router's columns are experts, a routing decision's the k chosen in order.
        let column = match tap.stage() {
            Stage::MoeRouterLogits => "expert",
            Stage::MoeTopIds | Stage::MoeTopWeights => "choice",
            _ => "channel",
        };
        let channel = || index.get(1).map(|c| format!(", {column} {c}")).unwrap_or_default();
        let layout = tap.layout();
        Some(match layout {
            Layout::PerToken => format!("{} ({}){}", self.position("token position", row), self.token(row)?, channel()),
            Layout::PerImageToken if row < self.image_tokens() => format!("image token {row}{}", channel()),
            Layout::PerImageToken => return None,
            Layout::PerVideoToken if row < self.video_tokens() => format!("video token {row}{}", channel()),
            Layout::PerVideoToken => return None,
            Layout::VideoPixels => self.video_pixel(row, index.get(1).copied())?,
            Layout::Positions => {
                let position = *index.get(1)?;
                let axis = ["t", "h", "w"].get(row)?;
                format!("{axis} position of {} ({})", self.position("token", position), self.token(position)?)
            }
            Layout::PerPatch => {
                let (image, r, c) = self.cell(layout, row)?;
                format!(
                    "{}, patch row {r}, col {c} of the {}×{} grid{}",
                    self.grid_name(&image, row),
                    image.grid_h,
                    image.grid_w,
                    channel()
                )
            }
            Layout::PerMergedToken => {
                let (image, r, c) = self.cell(layout, row)?;
                format!(
                    "{}, merged token {} (block row {r}, col {c} of {}×{}){}",
                    self.grid_name(&image, row),
                    row - image.start,
                    image.grid_h,
                    image.grid_w,
                    channel()
                )
            }
            Layout::ConvState => {
                format!("layer {}, conv channel {row}, kernel slot {}", tap.index()?, index.get(1)?)
            }
            Layout::RecurrentState => format!(
                "layer {}, value head {row}, key dim {}, value dim {}",
                tap.index()?,
                index.get(1)?,
                index.get(2)?
            ),
            Layout::KvCache => {
                let position = *index.get(1)?;
                format!(
                    "layer {}, kv head {row}, {} ({}), dim {}",
                    tap.index()?,
                    self.position("position", position),
                    self.token(position)?,
                    index.get(2)?
                )
            }
            Layout::PerStep => format!("step {row}"),
            Layout::PerStepVocab => format!("step {row}, vocab id {}", index.get(1)?),
            Layout::PerStepRank => format!("step {row}, rank {}", index.get(1)?),
            Layout::Whole => return None,
        })
    }

    /// The error of a tap on an image grid, one map per image: each cell holds the largest
    /// |expected − actual| over the channels of the row that lands on it. Empty for a tap off
    /// the image grids, for integer arrays and for arrays that are not both [rows, channels]
    /// of one shape.
    pub fn heatmaps(&self, mode: &str, tap: Tap, expected: &Array, actual: &Array) -> Vec<Heatmap> {
        let layout = tap.layout();
        let (Some(e), Some(a)) = (expected.as_f32(), actual.as_f32()) else { return Vec::new() };
        if !layout.on_image_grid() || expected.shape != actual.shape || expected.shape.len() != 2 {
            return Vec::new();
        }
        // A tap without channels has no error to draw (and rows of no width cannot be cut).
        if expected.shape[1] == 0 {
            return Vec::new();
        }
        let width = expected.shape[1];
        let row_max: Vec<f64> = e
            .chunks(width)
            .zip(a.chunks(width))
            .map(|(e, a)| e.iter().zip(a).map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs()).fold(0.0, f64::max))
            .collect();
        self.images(layout)
            .iter()
            .map(|image| {
                let mut cells = vec![0.0; image.grid_h * image.grid_w];
                for (row, &max_abs) in row_max.iter().enumerate().take(image.start + image.count).skip(image.start) {
                    let slot = self.cell_in(layout, image, row).and_then(|(r, c)| cells.get_mut(r * image.grid_w + c));
                    if let Some(slot) = slot {
                        *slot = f64::max(*slot, max_abs);
                    }
                }
                Heatmap {
                    mode: mode.into(),
                    tap: tap.to_string(),
                    image: image.image,
                    grid_h: image.grid_h,
                    grid_w: image.grid_w,
                    max_abs: cells,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MERGE: usize = 2;

    /// The rotary positions the vision tower gives an image's patches: block by block of
    /// merge × merge patches, row-major over the blocks and within each block.
    fn rotary_of(grids: &[(usize, usize, usize)]) -> Vec<[u32; 2]> {
        let mut rotary = Vec::new();
        for &(t, h, w) in grids {
            for _ in 0..t {
                for block_row in 0..h / MERGE {
                    for block_col in 0..w / MERGE {
                        for r in 0..MERGE {
                            for c in 0..MERGE {
                                rotary.push([(block_row * MERGE + r) as u32, (block_col * MERGE + c) as u32]);
                            }
                        }
                    }
                }
            }
        }
        rotary
    }

    /// Two images: a 2×4 patch grid (8 patches, 2 merged tokens in a 1×2 block grid), then a
    /// 4×4 one (16 patches, 4 merged tokens in a 2×2 block grid).
    const GRIDS: [(usize, usize, usize); 2] = [(1, 2, 4), (1, 4, 4)];

    fn texts() -> Vec<String> {
        ["<|im_start|>", "user", "<|image_pad|>", "\n"].map(String::from).to_vec()
    }

    const IDS: [u32; 4] = [609, 872, 613, 198];

    fn locator<'a>(rotary: &'a [[u32; 2]], texts: &'a [String]) -> Locator<'a> {
        Locator {
            grids: GRIDS.to_vec(),
            videos: 0,
            video_frames: Vec::new(),
            merge: MERGE,
            rotary,
            input_ids: &IDS,
            token_texts: Some(texts),
            row_lengths: &[],
        }
    }

    fn tap(name: &str) -> Tap {
        Tap::parse(name).unwrap_or_else(|| panic!("{name} is a contract tap"))
    }

    /// The location of `index` in `name`, with the two-image locator.
    fn locate(name: &str, index: &[usize]) -> Option<String> {
        let rotary = rotary_of(&GRIDS);
        let texts = texts();
        locator(&rotary, &texts).locate(tap(name), index)
    }

    #[test]
    fn a_packed_batch_position_is_named_by_its_row() {
        let rotary = rotary_of(&GRIDS);
        let texts = texts();
        let l = Locator { row_lengths: &[1, 3], ..locator(&rotary, &texts) };
        let tap = Tap::parse("lm.norm").unwrap();
        assert_eq!(
            l.locate(tap, &[2, 4]).as_deref(),
            Some("row 1, token position 1 (id 613 \"<|image_pad|>\"), channel 4")
        );
        assert_eq!(
            l.locate(tap, &[0, 0]).as_deref(),
            Some("row 0, token position 0 (id 609 \"<|im_start|>\"), channel 0")
        );
    }

    #[test]
    fn a_patch_is_named_by_its_image_and_its_rotary_row_and_col_on_the_patch_grid() {
        // Row 5 is the second patch of the first image's second block: patch row 0, col 3.
        assert_eq!(
            locate("vision.block.2", &[5, 17]).as_deref(),
            Some("image 0, patch row 0, col 3 of the 2×4 grid, channel 17"),
            "vision.block.2 at [5, 17]"
        );
        assert_eq!(
            locate("input.pixel_values", &[2]).as_deref(),
            Some("image 0, patch row 1, col 0 of the 2×4 grid"),
            "a row without a channel index is named without a channel"
        );
    }

    #[test]
    fn the_second_images_patches_start_after_the_first_images_last_patch() {
        assert_eq!(
            locate("vision.tower", &[7, 0]).as_deref(),
            Some("image 0, patch row 1, col 3 of the 2×4 grid, channel 0"),
            "the first image's last patch"
        );
        assert_eq!(
            locate("vision.tower", &[8, 0]).as_deref(),
            Some("image 1, patch row 0, col 0 of the 4×4 grid, channel 0"),
            "the second image's first patch"
        );
        // The second image's third block starts at its ninth patch: patch row 2, col 0.
        assert_eq!(
            locate("vision.patch_embed", &[8 + 9, 4]).as_deref(),
            Some("image 1, patch row 2, col 1 of the 4×4 grid, channel 4"),
            "a patch inside the second image's third block"
        );
    }

    #[test]
    fn a_merged_token_is_named_by_its_image_and_its_block_row_and_col() {
        assert_eq!(
            locate("vision.projector", &[1, 9]).as_deref(),
            Some("image 0, merged token 1 (block row 0, col 1 of 1×2), channel 9"),
            "the first image's second merged token"
        );
        // The first image has 2 merged tokens, so row 5 is the second image's fourth.
        assert_eq!(
            locate("vision.projector", &[5, 3]).as_deref(),
            Some("image 1, merged token 3 (block row 1, col 1 of 2×2), channel 3"),
            "the second image's last merged token"
        );
        assert_eq!(
            locate("vision.projector", &[2, 0]).as_deref(),
            Some("image 1, merged token 0 (block row 0, col 0 of 2×2), channel 0"),
            "the second image's first merged token"
        );
    }

    #[test]
    fn a_token_position_is_named_with_its_id_and_text() {
        assert_eq!(
            locate("lm.layer.4", &[2, 30]).as_deref(),
            Some("token position 2 (id 613 \"<|image_pad|>\"), channel 30"),
            "lm.layer.4 at [2, 30]"
        );
        assert_eq!(
            locate("input.input_ids", &[3]).as_deref(),
            Some("token position 3 (id 198 \"\\n\")"),
            "the token ids have no channel"
        );
        assert_eq!(
            locate("lm.norm", &[0, 1]).as_deref(),
            Some("token position 0 (id 609 \"<|im_start|>\"), channel 1"),
            "lm.norm at [0, 1]"
        );
    }

    #[test]
    fn a_token_position_without_a_tokenizer_is_named_by_its_id_alone() {
        let rotary = rotary_of(&GRIDS);
        let locator = Locator { token_texts: None, ..locator(&rotary, &[]) };
        assert_eq!(
            locator.locate(tap("lm.layer.0"), &[1, 5]).as_deref(),
            Some("token position 1 (id 872), channel 5"),
            "lm.layer.0 at [1, 5] without token texts"
        );
        assert_eq!(locator.token(1).as_deref(), Some("id 872"), "token 1 without token texts");
    }

    #[test]
    fn a_position_row_is_named_by_its_axis_and_its_token() {
        assert_eq!(
            locate("input.position_ids", &[0, 0]).as_deref(),
            Some("t position of token 0 (id 609 \"<|im_start|>\")"),
            "the t row"
        );
        assert_eq!(
            locate("input.position_ids", &[1, 2]).as_deref(),
            Some("h position of token 2 (id 613 \"<|image_pad|>\")"),
            "the h row"
        );
        assert_eq!(
            locate("input.position_ids", &[2, 3]).as_deref(),
            Some("w position of token 3 (id 198 \"\\n\")"),
            "the w row"
        );
    }

    #[test]
    fn an_image_token_is_named_by_its_place_among_all_images_tokens() {
        assert_eq!(
            locate("lm.image_embeds", &[5, 120]).as_deref(),
            Some("image token 5, channel 120"),
            "the last of the 2 + 4 image tokens"
        );
        assert_eq!(locate("lm.image_embeds", &[0]).as_deref(), Some("image token 0"), "a row without a channel");
    }

    #[test]
    fn cache_elements_are_named_by_layer_head_and_position() {
        assert_eq!(
            locate("cache.3.key", &[1, 2, 5]).as_deref(),
            Some("layer 3, kv head 1, position 2 (id 613 \"<|image_pad|>\"), dim 5"),
            "cache.3.key at [1, 2, 5]"
        );
        assert_eq!(
            locate("cache.7.value", &[0, 0, 9]).as_deref(),
            Some("layer 7, kv head 0, position 0 (id 609 \"<|im_start|>\"), dim 9"),
            "cache.7.value at [0, 0, 9]"
        );
        assert_eq!(
            locate("cache.0.conv", &[17, 3]).as_deref(),
            Some("layer 0, conv channel 17, kernel slot 3"),
            "cache.0.conv at [17, 3]"
        );
        assert_eq!(
            locate("cache.2.recurrent", &[4, 6, 8]).as_deref(),
            Some("layer 2, value head 4, key dim 6, value dim 8"),
            "cache.2.recurrent at [4, 6, 8]"
        );
    }

    #[test]
    fn generation_elements_are_named_by_their_step() {
        assert_eq!(locate("gen.tokens", &[2]).as_deref(), Some("step 2"), "gen.tokens at [2]");
        assert_eq!(
            locate("gen.logits", &[1, 151_643]).as_deref(),
            Some("step 1, vocab id 151643"),
            "gen.logits at [1, 151643]"
        );
        assert_eq!(locate("gen.top_ids", &[3, 4]).as_deref(), Some("step 3, rank 4"), "gen.top_ids at [3, 4]");
        assert_eq!(locate("gen.top_logits", &[0, 1]).as_deref(), Some("step 0, rank 1"), "gen.top_logits at [0, 1]");
    }

    #[test]
    fn taps_whose_axes_name_no_place_have_no_location() {
        for (name, index) in [("lm.logits_last", &[7][..]), ("input.image_grid_thw", &[1, 2][..])] {
            assert_eq!(locate(name, index), None, "{name} at {index:?}");
        }
    }

    #[test]
    fn out_of_range_indices_have_no_location_rather_than_a_panic() {
        let outside: &[(&str, &[usize])] = &[
            ("vision.block.0", &[24, 0]),
            ("vision.block.0", &[]),
            ("vision.projector", &[6, 0]),
            ("lm.layer.0", &[4, 0]),
            ("input.input_ids", &[4]),
            ("lm.image_embeds", &[6, 0]),
            ("input.position_ids", &[3, 0]),
            ("input.position_ids", &[0, 4]),
            ("input.position_ids", &[0]),
            ("cache.3.key", &[0, 4, 0]),
            ("cache.3.key", &[0, 1]),
            ("cache.3.key", &[0]),
            ("cache.0.conv", &[1]),
            ("cache.0.recurrent", &[1, 2]),
            ("cache.0.recurrent", &[1]),
            ("gen.logits", &[1]),
            ("gen.top_ids", &[1]),
        ];
        for (name, index) in outside {
            assert_eq!(locate(name, index), None, "{name} at {index:?}");
        }
    }

    #[test]
    fn a_patch_without_a_rotary_position_has_no_location() {
        let rotary = rotary_of(&GRIDS)[..10].to_vec();
        let texts = texts();
        let locator = locator(&rotary, &texts);
        assert_eq!(locator.locate(tap("vision.tower"), &[12, 0]), None, "patch 12 of 10 rotary positions");
    }

    #[test]
    fn a_merge_size_of_zero_or_wider_than_the_image_names_no_merged_token() {
        let rotary = rotary_of(&GRIDS);
        let zero = Locator { merge: 0, ..locator(&rotary, &[]) };
        assert_eq!(zero.locate(tap("vision.projector"), &[0, 0]), None, "merge size 0");
        assert_eq!(zero.locate(tap("lm.image_embeds"), &[0, 0]), None, "merge size 0 has no image tokens");
        let narrow = Locator { grids: vec![(1, 4, 1)], merge: 2, ..locator(&rotary, &[]) };
        assert_eq!(narrow.locate(tap("vision.projector"), &[0, 0]), None, "a 4×1 grid merged 2×2 has no block column");
    }

    #[test]
    fn a_merged_token_covers_merge_squared_patches_for_any_merge_size() {
        // Three by three patches a token: a 3×6 grid has 2 tokens, a 6×6 one 4 after them.
        let locator = Locator { grids: vec![(1, 3, 6), (1, 6, 6)], merge: 3, ..Locator::default() };
        assert_eq!(locator.image_tokens(), 6, "2 + 4 merged tokens");
        assert_eq!(
            locator.locate(tap("vision.projector"), &[3, 0]).as_deref(),
            Some("image 1, merged token 1 (block row 0, col 1 of 2×2), channel 0"),
            "the second image's second merged token"
        );
    }

    #[test]
    fn each_image_has_its_rows_and_grid_after_the_previous_images_rows() {
        let rotary = rotary_of(&GRIDS);
        let locator = locator(&rotary, &[]);
        let rows = |image, start, count, grid_h, grid_w| ImageRows { image, start, count, grid_h, grid_w, frames: 1 };
        assert_eq!(locator.images(Layout::PerPatch), [rows(0, 0, 8, 2, 4), rows(1, 8, 16, 4, 4)], "per patch");
        assert_eq!(
            locator.images(Layout::PerMergedToken),
            [rows(0, 0, 2, 1, 2), rows(1, 2, 4, 2, 2)],
            "per merged token"
        );
        assert_eq!(locator.images(Layout::PerToken), [], "per token");
        assert_eq!(locator.image_tokens(), 6, "image tokens of both images");
        let video = Locator { grids: vec![(2, 2, 2)], ..locator.clone() };
        let two_frames = |count, grid| ImageRows { frames: 2, ..rows(0, 0, count, grid, grid) };
        assert_eq!(video.images(Layout::PerPatch), [two_frames(8, 2)], "two frames of 2×2 patches");
        assert_eq!(video.images(Layout::PerMergedToken), [two_frames(2, 1)], "two frames of one block");
    }

    /// The two images of [`GRIDS`], then a video of 3 frames of 2×4 patches (6 merged tokens).
    fn with_a_video<'a>(rotary: &'a [[u32; 2]], texts: &'a [String]) -> Locator<'a> {
        Locator {
            grids: vec![GRIDS[0], GRIDS[1], (3, 2, 4)],
            videos: 1,
            video_frames: vec![(5, 2, 3)],
            ..locator(rotary, texts)
        }
    }

    #[test]
    fn a_video_patch_is_named_by_its_video_and_frame_after_the_images() {
        let grids = [GRIDS[0], GRIDS[1], (3, 2, 4)];
        let rotary = rotary_of(&grids);
        let l = with_a_video(&rotary, &[]);
        // The images take 8 + 16 patches; the video's frames 8 each: row 24 + 8 + 5 is frame 1's
        // sixth patch (block 1, second patch: row 0, col 3).
        assert_eq!(
            l.locate(tap("vision.block.0"), &[24 + 8 + 5, 2]).as_deref(),
            Some("video 0, frame 1, patch row 0, col 3 of the 2×4 grid, channel 2"),
        );
        assert_eq!(
            l.locate(tap("vision.tower"), &[23, 0]).as_deref(),
            Some("image 1, patch row 3, col 3 of the 4×4 grid, channel 0"),
            "the last image patch is still an image's"
        );
        // The images have 2 + 4 merged tokens; the video 2 per frame: row 6 + 5 is frame 2's
        // second block.
        assert_eq!(
            l.locate(tap("vision.projector"), &[6 + 5, 1]).as_deref(),
            Some("video 0, frame 2, merged token 5 (block row 0, col 1 of 1×2), channel 1"),
        );
        assert_eq!((l.image_tokens(), l.video_tokens()), (6, 6), "image and video tokens");
        assert_eq!(l.locate(tap("lm.video_embeds"), &[5, 7]).as_deref(), Some("video token 5, channel 7"));
        assert_eq!(l.locate(tap("lm.video_embeds"), &[6, 0]), None, "past the video tokens");
        assert_eq!(l.locate(tap("lm.image_embeds"), &[6, 0]), None, "past the image tokens");
    }

    #[test]
    fn a_decoded_frame_pixel_is_named_by_its_video_frame_row_col_and_channel() {
        let rotary = rotary_of(&GRIDS);
        let l = with_a_video(&rotary, &[]);
        // Frames of 3×2 pixels: row 6 + 4 is frame 1's pixel (1, 1).
        assert_eq!(
            l.locate(tap("input.video_frames"), &[6 + 4, 1]).as_deref(),
            Some("video 0, frame 1, pixel row 1, col 1, channel G"),
        );
        assert_eq!(l.locate(tap("input.video_frames"), &[30, 0]), None, "past the 5 frames of 6 pixels");
    }

    /// Two [rows, 2] f32 arrays whose row `r` differs by `errors[r]` in its second channel
    /// (around 4, so that adding the two would not give the difference).
    fn with_errors(errors: &[f32]) -> (Array, Array) {
        let expected = Array::f32(vec![errors.len(), 2], vec![4.0; 2 * errors.len()]);
        let actual = Array::f32(vec![errors.len(), 2], errors.iter().flat_map(|&e| [4.0, 4.0 + e]).collect());
        (expected, actual)
    }

    #[test]
    fn a_patch_error_lands_on_the_cell_of_its_rotary_position_in_its_image() {
        let rotary = rotary_of(&GRIDS);
        let locator = locator(&rotary, &[]);
        let mut errors = vec![0.0; 24];
        errors[5] = 1.0; // image 0, patch row 0, col 3
        errors[8 + 9] = -2.0; // image 1, patch row 2, col 1
        let (expected, actual) = with_errors(&errors);
        let maps = locator.heatmaps("from-pixel-values", tap("vision.block.1"), &expected, &actual);
        assert_eq!(maps.len(), 2, "one map per image");
        let [first, second] = &maps[..] else { unreachable!() };
        assert_eq!((first.image, first.grid_h, first.grid_w), (0, 2, 4), "the first image's grid");
        assert_eq!(first.max_abs, [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0], "the first image's cells");
        assert_eq!((second.image, second.grid_h, second.grid_w), (1, 4, 4), "the second image's grid");
        let mut cells = vec![0.0; 16];
        cells[2 * 4 + 1] = 2.0;
        assert_eq!(second.max_abs, cells, "the second image's cells");
        assert_eq!((first.mode.as_str(), first.tap.as_str()), ("from-pixel-values", "vision.block.1"), "the names");
    }

    #[test]
    fn a_merged_token_error_lands_on_its_block_and_a_cell_keeps_the_largest_error() {
        let rotary = rotary_of(&GRIDS);
        let locator = locator(&rotary, &[]);
        let (expected, actual) = with_errors(&[0.5, 0.25, 0.0, 0.0, 3.0, 0.0]);
        let maps = locator.heatmaps("vision-teacher-forced", tap("vision.projector"), &expected, &actual);
        let grids: Vec<(usize, usize, Vec<f64>)> =
            maps.iter().map(|m| (m.grid_h, m.grid_w, m.max_abs.clone())).collect();
        assert_eq!(grids, [(1, 2, vec![0.5, 0.25]), (2, 2, vec![0.0, 0.0, 3.0, 0.0])], "the block grids");

        // Two patches with one rotary position: the cell shows the larger error.
        let mut doubled = rotary_of(&GRIDS);
        doubled[1] = doubled[0];
        let locator = Locator { rotary: &doubled, ..locator };
        let mut errors = vec![0.0; 24];
        errors[0] = 0.5;
        errors[1] = 0.75;
        let (expected, actual) = with_errors(&errors);
        let maps = locator.heatmaps("from-image-files", tap("vision.tower"), &expected, &actual);
        assert_eq!(maps[0].max_abs[..2], [0.75, 0.0], "the cell two patches share");
    }

    #[test]
    fn taps_off_the_image_grids_or_of_other_shapes_have_no_heatmap() {
        let rotary = rotary_of(&GRIDS);
        let locator = locator(&rotary, &[]);
        let (expected, actual) = with_errors(&[1.0; 24]);
        let none = |name: &str, e: &Array, a: &Array, why: &str| {
            assert!(locator.heatmaps("m", tap(name), e, a).is_empty(), "{name}: {why} should give no heat map");
        };
        none("lm.layer.0", &expected, &actual, "a per-token tap");
        none("vision.tower", &expected, &with_errors(&[1.0; 23]).1, "a shape mismatch");
        let flat = Array::f32(vec![48], vec![0.0; 48]);
        none("vision.tower", &flat, &flat, "a one-axis array");
        let empty = Array::f32(vec![24, 0], vec![]);
        none("vision.tower", &empty, &empty, "rows without channels");
        let ints = Array::i64(vec![24, 2], vec![0; 48]);
        none("vision.tower", &ints, &ints, "an integer array");
    }

    #[test]
    fn rows_past_the_last_image_are_left_off_the_heatmaps() {
        let rotary = rotary_of(&GRIDS);
        let locator = Locator { grids: vec![GRIDS[0]], ..locator(&rotary, &[]) };
        let (expected, actual) = with_errors(&[1.0; 24]);
        let maps = locator.heatmaps("m", tap("vision.tower"), &expected, &actual);
        assert_eq!(maps.len(), 1, "one image");
        assert_eq!(maps[0].max_abs, [1.0; 8], "the first image's eight cells");
    }
}
