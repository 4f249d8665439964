//! The in-memory form of a `.npy` dump: a dense, C-order tensor of `f32` or `i64`.
//!
//! Only these two element types exist because they are the only ones the parity dumps use:
//! activations and logits are compared as `f32`, token ids and positions as `i64`.

use std::ops::Range;

use contract::ArrayDtype;

/// A dense C-order (row-major) tensor read from or written to a `.npy` dump.
///
/// The fields are public so callers can destructure freely; the constructors
/// [`Array::f32`] and [`Array::i64`] are the way to build one whose `shape` and `data` agree.
/// Every other function in this crate tolerates arrays whose data does not fill the shape
/// (they report an error or a failed comparison instead of panicking).
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Extent of each axis; empty for a 0-dimensional (scalar) array.
    pub shape: Vec<usize>,
    /// The elements in C order.
    pub data: Data,
}

/// The elements of an [`Array`], typed.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// Floating-point tensors (activations, logits), stored as numpy `'<f4'`.
    F32(Vec<f32>),
    /// Integer tensors (token ids, positions), stored as numpy `'<i8'`.
    I64(Vec<i64>),
}

/// Why [`Array::select_rows`] could not select the requested rows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectRowsError {
    /// A 0-dimensional array has no axis 0 to select along.
    #[error("cannot select rows of a 0-dimensional array")]
    Scalar,
    /// A requested row does not exist.
    #[error("row {row} is out of range for an array of shape {shape:?}")]
    OutOfRange {
        /// The offending row index.
        row: usize,
        /// Shape of the array the rows were selected from.
        shape: Vec<usize>,
    },
}

/// Number of elements a tensor of `shape` holds, or `None` if that overflows `usize`.
///
/// A 0-dimensional shape holds one element.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &dim| n.checked_mul(dim))
}

/// The multi-dimensional index of C-order position `flat` in a tensor of `shape`, so that
/// reports can point at `(row, column)` rather than a flat offset.
///
/// Never panics: a `flat` beyond the element count yields an index whose leading
/// coordinate is out of range, and a 0-dimensional shape always yields `[]`.
pub fn unravel_index(shape: &[usize], flat: usize) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    let mut rest = flat;
    for axis in (1..shape.len()).rev() {
        // An axis of extent 0 has no valid coordinate; leave 0 and push the remainder
        // onto the leading axis so the result is visibly out of range.
        if let (Some(coordinate), Some(quotient)) = (rest.checked_rem(shape[axis]), rest.checked_div(shape[axis])) {
            index[axis] = coordinate;
            rest = quotient;
        }
    }
    if let Some(first) = index.first_mut() {
        *first = rest;
    }
    index
}

impl Data {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn dtype(&self) -> ArrayDtype {
        match self {
            Data::F32(_) => ArrayDtype::F32,
            Data::I64(_) => ArrayDtype::I64,
        }
    }
}

impl Array {
    /// Builds an `f32` array.
    ///
    /// # Panics
    ///
    /// If `data.len()` is not the number of elements `shape` describes: such an array is a
    /// programming error on the caller's side, not a data problem to be reported.
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        Self::new(shape, Data::F32(data))
    }

    /// Builds an `i64` array.
    ///
    /// # Panics
    ///
    /// If `data.len()` is not the number of elements `shape` describes (see [`Array::f32`]).
    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Self {
        Self::new(shape, Data::I64(data))
    }

    fn new(shape: Vec<usize>, data: Data) -> Self {
        let expected = element_count(&shape);
        assert!(
            expected == Some(data.len()),
            "shape {shape:?} holds {expected:?} elements but {} were given",
            data.len()
        );
        Array { shape, data }
    }

    /// The element type.
    pub fn dtype(&self) -> ArrayDtype {
        self.data.dtype()
    }

    /// Number of elements (the length of the data).
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the array holds no elements (some axis has extent 0).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The elements, if this is an `f32` array.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            Data::I64(_) => None,
        }
    }

    /// The elements, if this is an `i64` array.
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            Data::I64(v) => Some(v),
            Data::F32(_) => None,
        }
    }

    /// The multi-dimensional index of the element at C-order position `flat`
    /// (see [`unravel_index`]).
    pub fn unravel(&self, flat: usize) -> Vec<usize> {
        unravel_index(&self.shape, flat)
    }

    /// A new array made of the given rows along axis 0, in the given order (repeats allowed),
    /// e.g. to compare only the logits at a few sequence positions.
    ///
    /// The result has shape `[rows.len(), shape[1..]...]`.
    pub fn select_rows(&self, rows: &[usize]) -> Result<Array, SelectRowsError> {
        let Some((&n_rows, row_shape)) = self.shape.split_first() else {
            return Err(SelectRowsError::Scalar);
        };
        // A row is taken only if it lies inside axis 0 *and* inside the data, so a malformed
        // array (data shorter than its shape) gives an error rather than a panic.
        let range_of = |row: usize| {
            let row_len = element_count(row_shape)?;
            let start = row.checked_mul(row_len)?;
            let end = start.checked_add(row_len)?;
            (row < n_rows && end <= self.len()).then_some(start..end)
        };
        let ranges = rows
            .iter()
            .map(|&row| range_of(row).ok_or_else(|| SelectRowsError::OutOfRange { row, shape: self.shape.clone() }))
            .collect::<Result<Vec<_>, _>>()?;
        fn gather<T: Copy>(data: &[T], ranges: &[Range<usize>]) -> Vec<T> {
            ranges.iter().flat_map(|range| &data[range.clone()]).copied().collect()
        }
        let data = match &self.data {
            Data::F32(v) => Data::F32(gather(v, &ranges)),
            Data::I64(v) => Data::I64(gather(v, &ranges)),
        };
        let shape = std::iter::once(rows.len()).chain(row_shape.iter().copied()).collect();
        Ok(Array { shape, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "shape [2, 3] holds Some(6) elements but 5 were given")]
    fn constructor_rejects_data_that_does_not_fill_the_shape() {
        Array::f32(vec![2, 3], vec![0.0; 5]);
    }

    #[test]
    fn scalar_shape_holds_one_element() {
        let a = Array::i64(vec![], vec![7]);
        assert_eq!((a.len(), a.dtype(), a.as_i64()), (1, ArrayDtype::I64, Some(&[7i64][..])));
        assert_eq!(a.as_f32(), None, "an i64 array has no f32 view");
    }

    #[test]
    fn unravel_follows_c_order() {
        let a = Array::f32(vec![2, 3, 4], vec![0.0; 24]);
        assert_eq!(a.unravel(0), vec![0, 0, 0]);
        assert_eq!(a.unravel(5), vec![0, 1, 1]);
        assert_eq!(a.unravel(23), vec![1, 2, 3]);
    }

    #[test]
    fn unravel_never_panics_on_degenerate_shapes() {
        let scalar = Array::f32(vec![], vec![1.0]);
        assert_eq!(scalar.unravel(0), Vec::<usize>::new());
        let empty = Array::f32(vec![2, 0], vec![]);
        assert_eq!(empty.unravel(3), vec![3, 0], "out-of-range flat index stays visible");
    }

    #[test]
    fn select_rows_keeps_the_requested_order() {
        let a = Array::i64(vec![3, 2], vec![0, 1, 10, 11, 20, 21]);
        let picked = a.select_rows(&[2, 0, 2]).expect("rows are in range");
        assert_eq!(picked, Array::i64(vec![3, 2], vec![20, 21, 0, 1, 20, 21]));
    }

    #[test]
    fn select_rows_reports_rows_out_of_range() {
        let a = Array::f32(vec![3, 2], vec![0.0; 6]);
        assert_eq!(a.select_rows(&[1, 3]), Err(SelectRowsError::OutOfRange { row: 3, shape: vec![3, 2] }));
        let scalar = Array::f32(vec![], vec![0.0]);
        assert_eq!(scalar.select_rows(&[0]), Err(SelectRowsError::Scalar));
    }

    #[test]
    fn select_rows_of_malformed_array_errors_instead_of_panicking() {
        let malformed = Array { shape: vec![3, 2], data: Data::F32(vec![0.0; 4]) };
        assert_eq!(malformed.select_rows(&[2]), Err(SelectRowsError::OutOfRange { row: 2, shape: vec![3, 2] }));
    }
}
