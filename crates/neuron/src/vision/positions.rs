//! The position-dependent indices of the vision tower, as small pure functions of the
//! image grids: the tower takes their results as inputs, so tests can inspect and perturb
//! them. Mirrors `transformers/vision_utils.py`.
//!
//! Every function walks the patches in the order the processor lays them out: image by
//! image, frame by frame, spatial-merge block by block (row-major over blocks), and inside a
//! block row-major over its `merge × merge` patches.

/// One image's patch grid: frames (after temporal patching), rows and columns of patches
/// (`image_grid_thw`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub t: usize,
    pub h: usize,
    pub w: usize,
}

impl Grid {
    pub fn patches(&self) -> usize {
        self.t * self.h * self.w
    }
}

/// (row, column) of every patch in processor order.
fn patch_rows_cols(grids: &[Grid], merge: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    grids.iter().flat_map(move |g| {
        let blocks_w = g.w / merge;
        (0..g.t).flat_map(move |_| {
            (0..g.h * g.w).map(move |within| {
                let in_col = within % merge;
                let in_row = (within / merge) % merge;
                let block_col = (within / (merge * merge)) % blocks_w;
                let block_row = within / (merge * merge * blocks_w);
                (block_row * merge + in_row, block_col * merge + in_col)
            })
        })
    })
}

/// Bilinear resampling of the square learned position table onto each image's grid:
/// four gather indices into the flattened `side × side` table and their weights per patch.
#[derive(Debug, Clone, PartialEq)]
pub struct Interpolation {
    pub indices: Vec<[u32; 4]>,
    pub weights: Vec<[f32; 4]>,
}

/// Mirrors `get_vision_interpolation_indices_and_weights(mode="bilinear", align_corners=True)`.
///
/// With align_corners the first and last patch of an axis sit exactly on the first and last
/// table entry: `src = i · (side − 1) / max(size − 1, 1)`, computed in f32 as the reference
/// does. The two taps per axis are `floor(src)` and `floor(src) + 1` clamped to the table,
/// weighted by the linear hat `max(1 − |src − tap|, 0)`.
pub fn pos_embed_interpolation(grids: &[Grid], side: usize, merge: usize) -> Interpolation {
    let axis = |index: usize, size: usize| -> ([u32; 2], [f32; 2]) {
        let src = index as f32 * (side - 1) as f32 / (size.max(2) - 1) as f32;
        let floor = src.floor();
        let mut taps = [0u32; 2];
        let mut weights = [0f32; 2];
        for (k, offset) in [0f32, 1.0].into_iter().enumerate() {
            taps[k] = ((floor + offset) as i64).clamp(0, side as i64 - 1) as u32;
            weights[k] = (1.0 - (src - floor - offset).abs()).max(0.0);
        }
        (taps, weights)
    };
    let mut indices = Vec::new();
    let mut weights = Vec::new();
    for (grid, (row, col)) in
        grids.iter().flat_map(|g| std::iter::repeat_n(*g, g.patches())).zip(patch_rows_cols(grids, merge))
    {
        let (h_taps, h_w) = axis(row, grid.h);
        let (w_taps, w_w) = axis(col, grid.w);
        let side = side as u32;
        indices.push([
            h_taps[0] * side + w_taps[0],
            h_taps[0] * side + w_taps[1],
            h_taps[1] * side + w_taps[0],
            h_taps[1] * side + w_taps[1],
        ]);
        weights.push([h_w[0] * w_w[0], h_w[0] * w_w[1], h_w[1] * w_w[0], h_w[1] * w_w[1]]);
    }
    Interpolation { indices, weights }
}

/// (row, column) per patch for the 2-D axial rotary embedding.
/// Mirrors `get_vision_position_ids(include_temporal=False)`.
pub fn rotary_positions(grids: &[Grid], merge: usize) -> Vec<[u32; 2]> {
    patch_rows_cols(grids, merge).map(|(r, c)| [r as u32, c as u32]).collect()
}

/// Boundaries of the attention segments: each frame of each image attends only to itself.
/// Mirrors `get_vision_cu_seqlens(merge_temporal=False)`.
pub fn attention_segments(grids: &[Grid]) -> Vec<usize> {
    let mut bounds = vec![0];
    for g in grids {
        for _ in 0..g.t {
            bounds.push(bounds.last().unwrap() + g.h * g.w);
        }
    }
    bounds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_are_laid_out_block_by_block() {
        let grid = [Grid { t: 1, h: 2, w: 4 }];
        let pos = rotary_positions(&grid, 2);
        let expected = [[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [0, 3], [1, 2], [1, 3]];
        assert_eq!(pos, expected);
    }

    #[test]
    fn the_block_order_holds_for_a_merge_size_other_than_two() {
        // merge 2 makes merge + merge equal merge · merge; a 3×3 merge tells them apart.
        let grid = [Grid { t: 1, h: 3, w: 6 }];
        let pos = rotary_positions(&grid, 3);
        let first_block: Vec<[u32; 2]> = (0..3).flat_map(|r| (0..3).map(move |c| [r, c])).collect();
        let second_block: Vec<[u32; 2]> = (0..3).flat_map(|r| (3..6).map(move |c| [r, c])).collect();
        assert_eq!(pos, [first_block, second_block].concat());
    }

    #[test]
    fn corner_patches_take_the_corner_table_entries_exactly() {
        let grid = [Grid { t: 1, h: 4, w: 6 }];
        let side = 48;
        let interp = pos_embed_interpolation(&grid, side, 2);
        let first = 0;
        let last = interp.indices.len() - 1; // the bottom-right patch in block order
        assert_eq!((interp.indices[first][0], interp.weights[first][0]), (0, 1.0));
        assert_eq!((interp.indices[last][0], interp.weights[last][0]), ((side * side - 1) as u32, 1.0));
        for (i, w) in interp.weights.iter().enumerate() {
            let sum: f32 = w.iter().sum();
            assert!((sum - 1.0).abs() < 1e-6, "weights of patch {i} sum to {sum}, not 1");
        }
    }

    #[test]
    fn each_frame_of_each_image_is_its_own_attention_segment() {
        let grids = [Grid { t: 1, h: 4, w: 6 }, Grid { t: 2, h: 2, w: 2 }];
        assert_eq!(attention_segments(&grids), [0, 24, 28, 32]);
    }
}
