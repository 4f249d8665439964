//! A left-padded batch's taps packed: each row's padding left out and the rows laid end to end
//! along the sequence axis. Packed, a batch's tap compares element for element with the
//! reference's packed tap (the padding positions, whose values nothing reads, are never
//! compared), and with the same tap of its rows run one by one, laid end to end the same way.

use contract::{Family, Layout, Stage, Tap};

use crate::array::{Array, Data};

/// The sequence axis of a tap of `layout` without its batch axis: the token positions of
/// [seq, …], [3, seq] and [kv_heads, seq, head_dim]; `None` for a tap without one.
pub fn sequence_axis(layout: Layout) -> Option<usize> {
    match layout {
        Layout::PerToken => Some(0),
        Layout::Positions | Layout::KvCache => Some(1),
        _ => None,
    }
}

/// Whether a batch's dump of `tap` has a leading batch axis: every tap but those the processor
/// and the vision tower lay out over the images of every row (grids, pixels, vision activations,
/// image embeddings).
pub fn carries_batch_axis(tap: Tap) -> bool {
    match tap.family() {
        Family::Vision => false,
        Family::Input => matches!(tap.stage(), Stage::InputIds | Stage::AttentionMask | Stage::PositionIds),
        _ => tap.stage() != Stage::LmImageEmbeds,
    }
}

/// A batch's tap [batch, …] with each row's first `padding[row]` positions left out along the
/// sequence axis and the rows concatenated along it; a tap without a sequence axis keeps its
/// rows as they are. `padding` has one entry per row.
pub fn pack(array: &Array, layout: Layout, padding: &[usize]) -> Result<Array, String> {
    let (&rows, rest) = array.shape.split_first().ok_or("a batch's tap has a batch axis")?;
    let Some(axis) = sequence_axis(layout) else {
        return if rows == padding.len() {
            Ok(array.clone())
        } else {
            Err(format!("a batch of {} rows has a tap of shape {:?}", padding.len(), array.shape))
        };
    };
    if rows != padding.len() {
        return Err(format!("a batch of {} rows has a tap of shape {:?}", padding.len(), array.shape));
    }
    let row_len: usize = rest.iter().product();
    let pieces: Vec<Array> = (0..rows)
        .map(|row| drop_leading(&slice(array, row * row_len, (row + 1) * row_len, rest.to_vec()), axis, padding[row]))
        .collect::<Result<_, _>>()?;
    concat(&pieces, axis)
}

/// The same tap of a batch's rows run one by one, laid out as [`pack`] lays out the batch's:
/// end to end along the sequence axis, or along the first axis for a tap without one. A tap of
/// one row without a row axis ([vocab], [steps]) gets one first.
pub fn stack_rows(rows: &[Array], layout: Layout) -> Result<Array, String> {
    match sequence_axis(layout) {
        Some(axis) => concat(rows, axis),
        None => {
            let lifted: Vec<Array> = rows.iter().map(|a| with_shape(a, [&[1], a.shape.as_slice()].concat())).collect();
            concat(&lifted, 0)
        }
    }
}

fn with_shape(a: &Array, shape: Vec<usize>) -> Array {
    Array { shape, data: a.data.clone() }
}

/// Elements `start..end` of the flat data, as an array of `shape`.
fn slice(a: &Array, start: usize, end: usize, shape: Vec<usize>) -> Array {
    let data = match &a.data {
        Data::F32(v) => Data::F32(v[start..end].to_vec()),
        Data::I64(v) => Data::I64(v[start..end].to_vec()),
    };
    Array { shape, data }
}

/// `a` without its first `n` entries along `axis`.
fn drop_leading(a: &Array, axis: usize, n: usize) -> Result<Array, String> {
    let len = *a.shape.get(axis).ok_or_else(|| format!("no axis {axis} in shape {:?}", a.shape))?;
    if n > len {
        return Err(format!("{n} padding positions in an axis of {len}"));
    }
    let outer: usize = a.shape[..axis].iter().product();
    let inner: usize = a.shape[axis + 1..].iter().product();
    let mut shape = a.shape.clone();
    shape[axis] = len - n;
    let kept: Vec<usize> = (0..outer)
        .flat_map(|o| (n..len).flat_map(move |i| (0..inner).map(move |j| (o * len + i) * inner + j)))
        .collect();
    Ok(match &a.data {
        Data::F32(v) => Array { shape, data: Data::F32(kept.iter().map(|&k| v[k]).collect()) },
        Data::I64(v) => Array { shape, data: Data::I64(kept.iter().map(|&k| v[k]).collect()) },
    })
}

/// Arrays of one dtype whose shapes agree but along `axis`, laid end to end along it.
fn concat(arrays: &[Array], axis: usize) -> Result<Array, String> {
    let first = arrays.first().ok_or("nothing to lay end to end")?;
    let mut shape = first.shape.clone();
    if axis >= shape.len() {
        return Err(format!("no axis {axis} in shape {shape:?}"));
    }
    for a in &arrays[1..] {
        let same = a.shape.len() == shape.len()
            && a.shape.iter().zip(&first.shape).enumerate().all(|(i, (x, y))| i == axis || x == y)
            && a.dtype() == first.dtype();
        if !same {
            return Err(format!(
                "rows of shapes {:?} and {:?} ({} and {}) do not line up along axis {axis}",
                first.shape,
                a.shape,
                first.dtype(),
                a.dtype()
            ));
        }
    }
    shape[axis] = arrays.iter().map(|a| a.shape[axis]).sum();
    let outer: usize = first.shape[..axis].iter().product();
    let inner = |a: &Array| -> usize { a.shape[axis..].iter().product() };
    macro_rules! gather {
        ($variant:ident) => {{
            let mut out = Vec::with_capacity(shape.iter().product());
            for o in 0..outer {
                for a in arrays {
                    let Data::$variant(v) = &a.data else { unreachable!("dtypes checked") };
                    let n = inner(a);
                    out.extend_from_slice(&v[o * n..(o + 1) * n]);
                }
            }
            Data::$variant(out)
        }};
    }
    let data = match &first.data {
        Data::F32(_) => gather!(F32),
        Data::I64(_) => gather!(I64),
    };
    Ok(Array { shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_tap_per_token_is_packed_without_each_rows_padding() {
        // Two rows of 3 positions × 2 channels; row 0 padded by 2, row 1 by 0.
        let batch = Array::f32(vec![2, 3, 2], vec![0., 0., 0., 0., 1., 2., 3., 4., 5., 6., 7., 8.]);
        let packed = pack(&batch, Layout::PerToken, &[2, 0]).unwrap();
        assert_eq!(packed, Array::f32(vec![4, 2], vec![1., 2., 3., 4., 5., 6., 7., 8.]));
        let alone = [Array::f32(vec![1, 2], vec![1., 2.]), Array::f32(vec![3, 2], vec![3., 4., 5., 6., 7., 8.])];
        assert_eq!(stack_rows(&alone, Layout::PerToken).unwrap(), packed, "the rows run alone, end to end");
    }

    #[test]
    fn positions_and_cached_keys_are_packed_along_their_own_sequence_axis() {
        // [batch 2, 3 axes, seq 2]: row 0 padded by 1.
        let positions = Array::i64(vec![2, 3, 2], vec![0, 7, 0, 8, 0, 9, 1, 2, 3, 4, 5, 6]);
        let packed = pack(&positions, Layout::Positions, &[1, 0]).unwrap();
        assert_eq!(packed, Array::i64(vec![3, 3], vec![7, 1, 2, 8, 3, 4, 9, 5, 6]), "[3 axes, 1 + 2 positions]");
        // [batch 2, kv heads 1, seq 2, dim 1].
        let keys = Array::f32(vec![2, 1, 2, 1], vec![0., 1., 2., 3.]);
        assert_eq!(pack(&keys, Layout::KvCache, &[1, 0]).unwrap(), Array::f32(vec![1, 3, 1], vec![1., 2., 3.]));
    }

    #[test]
    fn a_tap_without_a_sequence_axis_keeps_every_row() {
        let logits = Array::f32(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]);
        assert_eq!(pack(&logits, Layout::Whole, &[5, 0]).unwrap(), logits);
        let alone = [Array::f32(vec![3], vec![1., 2., 3.]), Array::f32(vec![3], vec![4., 5., 6.])];
        assert_eq!(stack_rows(&alone, Layout::Whole).unwrap(), logits, "each row's [vocab] gets a row axis");
    }

    #[test]
    fn a_tap_of_another_batch_size_or_rows_that_do_not_line_up_are_errors() {
        let batch = Array::f32(vec![3, 1], vec![1., 2., 3.]);
        assert!(pack(&batch, Layout::PerToken, &[0, 0]).unwrap_err().contains("a batch of 2 rows"));
        let rows = [Array::f32(vec![1, 2], vec![1., 2.]), Array::f32(vec![1, 3], vec![1., 2., 3.])];
        assert!(stack_rows(&rows, Layout::PerToken).unwrap_err().contains("do not line up"));
    }
}
