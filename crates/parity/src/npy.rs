//! Reading and writing `.npy` dumps (NumPy format versions 1.0–3.0).
//!
//! Only little-endian, C-order `float32` (`'<f4'`) and `int64` (`'<i8'`) arrays are
//! accepted, because those are what the PyTorch reference dumps contain; anything else
//! is refused with an error naming the file and what was found, instead of being
//! silently converted.
//!
//! The header is parsed here rather than with `npyz`: `npyz` panics on a header whose
//! shape overflows `u64`, and it does not write byte-identical files to `np.save`.
//! Files written by [`write_npy`] are byte-identical to `np.save` of current NumPy (checked
//! against numpy 2.4.6), so digests of dumps do not depend on which side wrote them.
//!
//! A path ending in `.gz` holds the same bytes gzip-compressed (RFC 1952, no file name, mtime
//! 0, so the same array always compresses to the same file). The checked-in dumps are stored
//! that way: `input.pixel_values` holds at most 256 distinct values per channel and shrinks
//! about 7×, which keeps `fixtures/` within its size budget; NumPy reads them with
//! `np.load(gzip.open(path))`.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::array::{element_count, Array, Data};
use contract::ArrayDtype;

/// Why a `.npy` file could not be read or written. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    /// The file could not be read from disk.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error (part of the message, so not also a `source`).
        error: io::Error,
    },
    /// The file could not be written to disk.
    #[error("cannot write {}: {error}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error (part of the message, so not also a `source`).
        error: io::Error,
    },
    /// The bytes are not a well-formed `.npy` file, or the array to write is malformed.
    #[error("{}: invalid .npy: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file holds an element type other than `'<f4'` / `'<i8'`.
    #[error(
        "{}: unsupported dtype {found}; only little-endian float32 ('<f4') and int64 ('<i8') are supported",
        path.display()
    )]
    UnsupportedDType {
        /// The file.
        path: PathBuf,
        /// The `descr` value as written in the header, e.g. `'<f8'`.
        found: String,
    },
    /// The array is stored in Fortran (column-major) order.
    #[error(
        "{}: array of dtype {dtype} is stored in Fortran order; only C order is supported \
         (save np.ascontiguousarray(x) instead)",
        path.display()
    )]
    FortranOrder {
        /// The file.
        path: PathBuf,
        /// The `descr` value as written in the header.
        dtype: String,
    },
}

const MAGIC: &[u8] = b"\x93NUMPY";
/// NumPy pads headers so that the data starts at a multiple of this many bytes.
const ARRAY_ALIGN: usize = 64;
/// NumPy leaves room after the header dict for the leading axis to grow to this many digits.
const GROWTH_AXIS_MAX_DIGITS: usize = 21;
/// Bound on nesting in header literals, so hostile input cannot overflow the stack.
const MAX_LITERAL_DEPTH: usize = 32;

/// Reads a `.npy` file, or a gzip-compressed one when the name ends in `.gz`.
pub fn read_npy(path: &Path) -> Result<Array, NpyError> {
    let bytes = fs::read(path).map_err(|error| NpyError::Read { path: path.to_owned(), error })?;
    if !is_gzip_path(path) {
        return decode(&bytes, path);
    }
    if !bytes.starts_with(GZIP_MAGIC) {
        return Err(invalid(path, "the name ends in .gz but the file is not gzip-compressed"));
    }
    let mut npy = Vec::new();
    flate2::read::GzDecoder::new(bytes.as_slice())
        .read_to_end(&mut npy)
        .map_err(|e| invalid(path, format!("cannot decompress: {e}")))?;
    decode(&npy, path)
}

/// Parses the contents of a `.npy` file; `name` identifies it in error messages.
pub fn read_npy_bytes(bytes: &[u8], name: &str) -> Result<Array, NpyError> {
    decode(bytes, Path::new(name))
}

/// Writes `a` as a `.npy` file, byte-identical to what `np.save` writes for the same array;
/// gzip-compressed at the best level when the name ends in `.gz`.
pub fn write_npy(path: &Path, a: &Array) -> Result<(), NpyError> {
    let mut bytes = encode(a, path)?;
    if is_gzip_path(path) {
        bytes = gzip(&bytes).map_err(|error| NpyError::Write { path: path.to_owned(), error })?;
    }
    fs::write(path, bytes).map_err(|error| NpyError::Write { path: path.to_owned(), error })
}

const GZIP_MAGIC: &[u8] = b"\x1f\x8b";

fn is_gzip_path(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "gz")
}

/// `bytes` gzip-compressed with a fixed header (no name, mtime 0), so equal inputs give
/// equal files and equal digests.
fn gzip(bytes: &[u8]) -> io::Result<Vec<u8>> {
    let mut encoder = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes)?;
    encoder.finish()
}

/// The bytes [`write_npy`] would write, e.g. for digests; `name` identifies the array in
/// error messages. Fails only if `a.data` does not fill `a.shape`.
pub fn write_npy_bytes(a: &Array, name: &str) -> Result<Vec<u8>, NpyError> {
    encode(a, Path::new(name))
}

/// The NumPy type string and element size in bytes of `dtype`.
fn numpy_type(dtype: ArrayDtype) -> (&'static str, usize) {
    match dtype {
        ArrayDtype::F32 => ("<f4", 4),
        ArrayDtype::I64 => ("<i8", 8),
    }
}

fn invalid(path: &Path, reason: impl Into<String>) -> NpyError {
    NpyError::Invalid { path: path.to_owned(), reason: reason.into() }
}

fn decode(bytes: &[u8], path: &Path) -> Result<Array, NpyError> {
    let (text, data) = split_header(bytes).map_err(|reason| invalid(path, reason))?;
    let header = parse_header(text).map_err(|reason| invalid(path, reason))?;
    let dtype = [ArrayDtype::F32, ArrayDtype::I64]
        .into_iter()
        .find(|&dtype| matches!(header.descr, Literal::Str(s) if s == numpy_type(dtype).0))
        .ok_or_else(|| NpyError::UnsupportedDType { path: path.to_owned(), found: header.descr_text.to_owned() })?;
    if header.fortran_order {
        return Err(NpyError::FortranOrder { path: path.to_owned(), dtype: header.descr_text.to_owned() });
    }
    let expected_bytes = element_count(&header.shape)
        .and_then(|n| n.checked_mul(numpy_type(dtype).1))
        .ok_or_else(|| invalid(path, format!("shape {:?} is too large", header.shape)))?;
    if data.len() != expected_bytes {
        return Err(invalid(
            path,
            format!(
                "shape {:?} of {dtype} needs {expected_bytes} data bytes but the file holds {}",
                header.shape,
                data.len()
            ),
        ));
    }
    let data = match dtype {
        ArrayDtype::F32 => {
            Data::F32(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        }
        ArrayDtype::I64 => Data::I64(
            data.chunks_exact(8)
                .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect(),
        ),
    };
    Ok(Array { shape: header.shape, data })
}

/// Splits a file into its header text and data bytes, checking magic, version and lengths.
fn split_header(bytes: &[u8]) -> Result<(&str, &[u8]), String> {
    let rest = bytes.strip_prefix(MAGIC).ok_or("missing the \\x93NUMPY magic string")?;
    // Version 1.0 stores the header length in 2 bytes; 2.0 and 3.0 in 4.
    let length_size = match rest.get(..2) {
        Some([1, 0]) => 2,
        Some([2, 0] | [3, 0]) => 4,
        Some([major, minor]) => return Err(format!("unsupported format version {major}.{minor}")),
        _ => return Err("file ends inside the format version".into()),
    };
    let rest = &rest[2..];
    let header_len = match rest.get(..length_size) {
        Some(&[a, b]) => usize::from(u16::from_le_bytes([a, b])),
        Some(&[a, b, c, d]) => {
            usize::try_from(u32::from_le_bytes([a, b, c, d])).map_err(|_| "header length does not fit in memory")?
        }
        _ => return Err("file ends inside the header length".into()),
    };
    let rest = &rest[length_size..];
    let text = rest
        .get(..header_len)
        .ok_or_else(|| format!("header length {header_len} exceeds the {} bytes that follow it", rest.len()))?;
    let text = std::str::from_utf8(text).map_err(|_| "header is not valid UTF-8")?;
    Ok((text, &rest[header_len..]))
}

/// The three entries of a `.npy` header dict.
struct Header<'a> {
    descr: Literal<'a>,
    /// `descr` exactly as written, for error messages.
    descr_text: &'a str,
    fortran_order: bool,
    shape: Vec<usize>,
}

fn parse_header(text: &str) -> Result<Header<'_>, String> {
    let mut parser = Parser { text, pos: 0 };
    let entries = parser.dict()?;
    let mut descr = None;
    let mut fortran_order = None;
    let mut shape = None;
    for (key, value, value_text) in entries {
        match (key, value) {
            ("descr", value) => descr = Some((value, value_text)),
            ("fortran_order", Literal::Bool(b)) => fortran_order = Some(b),
            ("shape", Literal::Seq(dims)) => {
                let dims = dims
                    .iter()
                    .map(|dim| match dim {
                        Literal::Int(digits) => {
                            digits.parse::<usize>().map_err(|_| format!("dimension {digits} is too large"))
                        }
                        _ => Err(format!("shape {value_text} is not a tuple of integers")),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                shape = Some(dims);
            }
            ("fortran_order" | "shape", _) => return Err(format!("header has an invalid '{key}': {value_text}")),
            _ => return Err(format!("header has an unexpected key '{key}'")),
        }
    }
    let missing = |key| format!("header lacks the key '{key}'");
    let (descr, descr_text) = descr.ok_or_else(|| missing("descr"))?;
    Ok(Header {
        descr,
        descr_text,
        fortran_order: fortran_order.ok_or_else(|| missing("fortran_order"))?,
        shape: shape.ok_or_else(|| missing("shape"))?,
    })
}

/// The subset of Python literals that appears in `.npy` headers.
enum Literal<'a> {
    /// String contents as written (escapes are not interpreted; no valid header needs them).
    Str(&'a str),
    Bool(bool),
    /// Decimal digits.
    Int(&'a str),
    /// A tuple or list.
    Seq(Vec<Literal<'a>>),
}

/// A recursive-descent parser over header text.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn unexpected(&self) -> String {
        match self.text[self.pos..].chars().next() {
            Some(c) => format!("unexpected {c:?} at offset {} of the header", self.pos),
            None => "header ends early".into(),
        }
    }

    /// Consumes `byte` (after optional whitespace) or fails.
    fn expect(&mut self, byte: u8) -> Result<(), String> {
        self.skip_whitespace();
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    /// Parses the whole text as `{key: value, ...}`, returning each value with its source text.
    fn dict(&mut self) -> Result<Vec<(&'a str, Literal<'a>, &'a str)>, String> {
        let mut entries = Vec::new();
        self.expect(b'{')?;
        loop {
            self.skip_whitespace();
            if self.peek() == Some(b'}') {
                self.pos += 1;
                break;
            }
            let Literal::Str(key) = self.value(0)? else {
                return Err("header dict has a non-string key".into());
            };
            self.expect(b':')?;
            self.skip_whitespace();
            let start = self.pos;
            let value = self.value(0)?;
            entries.push((key, value, &self.text[start..self.pos]));
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                _ => return Err(self.unexpected()),
            }
        }
        self.skip_whitespace();
        if self.pos == self.text.len() {
            Ok(entries)
        } else {
            Err(self.unexpected())
        }
    }

    fn value(&mut self, depth: usize) -> Result<Literal<'a>, String> {
        if depth > MAX_LITERAL_DEPTH {
            return Err("header literal is nested too deeply".into());
        }
        self.skip_whitespace();
        let rest = &self.text[self.pos..];
        match self.peek() {
            Some(quote @ (b'\'' | b'"')) => {
                let bytes = rest.as_bytes();
                let mut end = 1;
                while end < bytes.len() && bytes[end] != quote {
                    end += if bytes[end] == b'\\' { 2 } else { 1 };
                }
                if end >= bytes.len() {
                    return Err("header has an unterminated string".into());
                }
                self.pos += end + 1;
                Ok(Literal::Str(&rest[1..end]))
            }
            Some(open @ (b'(' | b'[')) => {
                let close = if open == b'(' { b')' } else { b']' };
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_whitespace();
                    if self.peek() == Some(close) {
                        self.pos += 1;
                        return Ok(Literal::Seq(items));
                    }
                    items.push(self.value(depth + 1)?);
                    self.skip_whitespace();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b) if b == close => {}
                        _ => return Err(self.unexpected()),
                    }
                }
            }
            Some(b'0'..=b'9') => {
                let len = rest.bytes().take_while(u8::is_ascii_digit).count();
                self.pos += len;
                Ok(Literal::Int(&rest[..len]))
            }
            _ if rest.starts_with("True") => {
                self.pos += 4;
                Ok(Literal::Bool(true))
            }
            _ if rest.starts_with("False") => {
                self.pos += 5;
                Ok(Literal::Bool(false))
            }
            _ => Err(self.unexpected()),
        }
    }
}

/// Serialises `a` exactly as `np.save` does: sorted-key dict, growth room for the leading
/// axis, space padding to a 64-byte boundary, version 1.0 unless the header needs 2.0.
fn encode(a: &Array, path: &Path) -> Result<Vec<u8>, NpyError> {
    if element_count(&a.shape) != Some(a.len()) {
        return Err(invalid(path, format!("shape {:?} does not hold the array's {} elements", a.shape, a.len())));
    }
    let (descr, item_size) = numpy_type(a.dtype());
    let dims: Vec<String> = a.shape.iter().map(usize::to_string).collect();
    let shape = match dims.as_slice() {
        [only] => format!("({only},)"),
        _ => format!("({})", dims.join(", ")),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    if let Some(first) = dims.first() {
        dict.push_str(&" ".repeat(GROWTH_AXIS_MAX_DIGITS.saturating_sub(first.len())));
    }
    // Header length counts the dict, the padding and the final newline. NumPy always adds
    // at least one space of padding (a full ARRAY_ALIGN when already aligned).
    let padded_len = |prefix_len: usize| {
        let unpadded = dict.len() + 1;
        unpadded + ARRAY_ALIGN - (prefix_len + unpadded) % ARRAY_ALIGN
    };
    let v1_len = padded_len(MAGIC.len() + 2 + 2);
    let (version, header_len, length_bytes) = match u16::try_from(v1_len) {
        Ok(len) => ([1, 0], v1_len, len.to_le_bytes().to_vec()),
        Err(_) => {
            let v2_len = padded_len(MAGIC.len() + 2 + 4);
            let len =
                u32::try_from(v2_len).map_err(|_| invalid(path, format!("header of {v2_len} bytes is too long")))?;
            ([2, 0], v2_len, len.to_le_bytes().to_vec())
        }
    };
    let mut out = Vec::with_capacity(MAGIC.len() + 6 + header_len + a.len() * item_size);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version);
    out.extend_from_slice(&length_bytes);
    out.extend_from_slice(dict.as_bytes());
    out.resize(out.len() + header_len - dict.len() - 1, b' ');
    out.push(b'\n');
    match &a.data {
        Data::F32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Data::I64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `np.save` (numpy 2.4.6) of `np.array([[1.5, -2.0, 0.0], [3.25, 1e-3, -0.0]], '<f4')`.
    const NUMPY_F32_2X3: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }                                                          \n\x00\x00\xc0?\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00P@o\x12\x83:\x00\x00\x00\x80";
    /// `np.save` (numpy 2.4.6) of `np.array([-1, 0, 2**40], '<i8')`.
    const NUMPY_I64_3: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }                                                            \n\xff\xff\xff\xff\xff\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00";
    /// `np.save` (numpy 2.4.6) of `np.array(2.5, '<f4')`.
    const NUMPY_F32_SCALAR: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (), }                                                              \n\x00\x00 @";
    /// `np.save` (numpy 2.4.6) of `np.zeros((2, 0, 3), '<f4')`.
    const NUMPY_F32_EMPTY: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2, 0, 3), }                                                       \n";

    /// A version-1.0 file around `dict`, padded the way NumPy pads.
    fn npy_with_header(dict: &str, data: &[u8]) -> Vec<u8> {
        let mut text = dict.to_owned();
        while !(10 + text.len() + 1).is_multiple_of(64) {
            text.push(' ');
        }
        text.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(text.len() as u16).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("parity-npy-{}-{name}", std::process::id()))
    }

    #[test]
    fn reads_files_written_by_numpy() {
        let cases = [
            (NUMPY_F32_2X3, Array::f32(vec![2, 3], vec![1.5, -2.0, 0.0, 3.25, 1e-3, -0.0])),
            (NUMPY_I64_3, Array::i64(vec![3], vec![-1, 0, 1 << 40])),
            (NUMPY_F32_SCALAR, Array::f32(vec![], vec![2.5])),
            (NUMPY_F32_EMPTY, Array::f32(vec![2, 0, 3], vec![])),
        ];
        for (bytes, expected) in cases {
            let read = read_npy_bytes(bytes, "numpy.npy");
            assert_eq!(read.as_ref().ok(), Some(&expected), "{read:?}");
        }
    }

    #[test]
    fn writes_the_same_bytes_as_numpy() {
        for bytes in [NUMPY_F32_2X3, NUMPY_I64_3, NUMPY_F32_SCALAR, NUMPY_F32_EMPTY] {
            let array = read_npy_bytes(bytes, "numpy.npy").expect("numpy file reads");
            let written = write_npy_bytes(&array, "rust.npy").expect("array is well-formed");
            assert_eq!(String::from_utf8_lossy(&written), String::from_utf8_lossy(bytes), "for {array:?}");
            assert_eq!(written, bytes, "for {array:?}");
        }
    }

    /// Python's `gzip.compress(np.save bytes of NUMPY_I64_3, mtime=0)` (zlib's deflate, not ours).
    const PYTHON_GZIP_I64_3: &[u8] = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03\x9b\xec\x17\xea\x1b\x10\xc9\xc8\x50\xc6\x50\xad\x9e\x92\x5a\x9c\x5c\xa4\x6e\xa5\xa0\x6e\x93\x69\xa1\xae\xa3\xa0\x9e\x96\x5f\x54\x52\x94\x98\x17\x9f\x5f\x94\x92\x0a\x12\x77\x4b\xcc\x29\x4e\x05\x8a\x17\x67\x24\x16\xa4\x02\xf9\x1a\xc6\x3a\x9a\x3a\x0a\xb5\x0a\x14\x00\xae\xff\x50\xc0\x80\x0c\x18\x19\x18\x00\x81\xed\x89\xab\x98\x00\x00\x00";

    #[test]
    fn a_gz_name_is_read_as_gzip_written_by_python() {
        let path = temp_path("python.npy.gz");
        fs::write(&path, PYTHON_GZIP_I64_3).unwrap();
        let read = read_npy(&path);
        let _ = fs::remove_file(&path);
        assert_eq!(read.ok(), Some(Array::i64(vec![3], vec![-1, 0, 1 << 40])));
    }

    #[test]
    fn a_gz_dump_roundtrips_and_the_same_array_always_compresses_to_the_same_bytes() {
        let a = Array::f32(vec![3, 2], vec![0.5, -1.0, 0.5, -1.0, 0.5, 1e-7]);
        let (first, second) = (temp_path("first.npy.gz"), temp_path("second.npy.gz"));
        write_npy(&first, &a).expect("write");
        write_npy(&second, &a).expect("write");
        let (bytes1, bytes2) = (fs::read(&first).unwrap(), fs::read(&second).unwrap());
        let read = read_npy(&first);
        let _ = (fs::remove_file(&first), fs::remove_file(&second));
        assert!(bytes1.starts_with(GZIP_MAGIC), "not gzip: {:02x?}", &bytes1[..4]);
        assert_eq!(bytes1, bytes2, "two writes of one array differ");
        assert_eq!(&bytes1[4..8], &[0; 4], "the gzip header carries a modification time");
        assert_eq!(read.ok(), Some(a.clone()));
        let raw = write_npy_bytes(&a, "raw.npy").unwrap();
        assert!(bytes1.len() < raw.len(), "compressed {} B is not smaller than raw {} B", bytes1.len(), raw.len());
    }

    #[test]
    fn a_gz_name_on_a_plain_npy_is_refused_by_name() {
        let path = temp_path("plain.npy.gz");
        fs::write(&path, NUMPY_I64_3).unwrap();
        let err = read_npy(&path).expect_err("not gzip");
        let _ = fs::remove_file(&path);
        let message = err.to_string();
        assert!(message.contains("plain.npy.gz") && message.contains("not gzip"), "message was: {message}");
    }

    #[test]
    fn a_truncated_gz_dump_is_refused_by_name() {
        let path = temp_path("cut.npy.gz");
        fs::write(&path, &PYTHON_GZIP_I64_3[..40]).unwrap();
        let err = read_npy(&path).expect_err("truncated");
        let _ = fs::remove_file(&path);
        let message = err.to_string();
        assert!(message.contains("cut.npy.gz") && message.contains("decompress"), "message was: {message}");
    }

    #[test]
    fn f32_roundtrips_through_a_file() {
        let path = temp_path("f32.npy");
        let a = Array::f32(vec![2, 2], vec![f32::MIN_POSITIVE, -0.0, f32::INFINITY, 1e30]);
        write_npy(&path, &a).expect("write");
        let read = read_npy(&path);
        let _ = fs::remove_file(&path);
        let read = read.expect("read back");
        // Compare bit patterns so -0.0 vs 0.0 would be caught.
        let bits = |a: &Array| a.as_f32().map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
        assert_eq!((&read.shape, bits(&read)), (&a.shape, bits(&a)));
    }

    #[test]
    fn i64_roundtrips_through_a_file() {
        let path = temp_path("i64.npy");
        let a = Array::i64(vec![3, 1], vec![i64::MIN, 0, i64::MAX]);
        write_npy(&path, &a).expect("write");
        let read = read_npy(&path);
        let _ = fs::remove_file(&path);
        assert_eq!(read.ok(), Some(a));
    }

    #[test]
    fn rejects_f8_naming_the_file_and_dtype() {
        let bytes = npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", &[0; 8]);
        let err = read_npy_bytes(&bytes, "dumps/logits.npy").expect_err("f8 is unsupported");
        assert!(matches!(err, NpyError::UnsupportedDType { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("dumps/logits.npy") && message.contains("'<f8'"), "message was: {message}");
    }

    #[test]
    fn rejects_big_endian_and_structured_dtypes() {
        for descr in ["'>f4'", "[('a', '<f4'), ('b', '<i8')]"] {
            let dict = format!("{{'descr': {descr}, 'fortran_order': False, 'shape': (1,), }}");
            let err = read_npy_bytes(&npy_with_header(&dict, &[0; 12]), "x.npy").expect_err("unsupported");
            assert!(err.to_string().contains(descr), "message was: {err}");
        }
    }

    #[test]
    fn rejects_fortran_order_naming_the_file() {
        let bytes = npy_with_header("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", &[0; 24]);
        let err = read_npy_bytes(&bytes, "dumps/fortran.npy").expect_err("fortran order is unsupported");
        assert!(matches!(err, NpyError::FortranOrder { .. }), "{err:?}");
        assert!(err.to_string().contains("dumps/fortran.npy"), "message was: {err}");
    }

    #[test]
    fn rejects_truncated_and_overlong_data() {
        let mut bytes = NUMPY_F32_2X3.to_vec();
        bytes.pop();
        let err = read_npy_bytes(&bytes, "short.npy").expect_err("truncated");
        assert!(err.to_string().contains("needs 24 data bytes but the file holds 23"), "message was: {err}");
        bytes.extend_from_slice(&[0, 0]);
        assert!(read_npy_bytes(&bytes, "long.npy").is_err(), "trailing bytes must be rejected");
    }

    #[test]
    fn malformed_headers_are_errors_not_panics() {
        let huge = "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1099511627776), }";
        let cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"\x93NUMPY".to_vec(),
            b"\x93NUMPY\x01\x00\xff\xff{".to_vec(),
            b"\x93NUMPY\x09\x00\x00\x00".to_vec(),
            npy_with_header(huge, &[]),
            npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,), }", &[]),
            npy_with_header("{'descr': '<f4', 'shape': (1,), }", &[0; 4]),
            npy_with_header("{'descr': '<f4', 'fortran_order': 0, 'shape': (1,), }", &[0; 4]),
            npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}", &[0; 4]),
            npy_with_header(&format!("{{'descr': {}", "(".repeat(1000)), &[]),
            npy_with_header("{'descr': '<f4", &[]),
        ];
        for bytes in cases {
            let result = read_npy_bytes(&bytes, "bad.npy");
            let Err(err) = result else {
                panic!("accepted {:?}", String::from_utf8_lossy(&bytes));
            };
            assert!(err.to_string().starts_with("bad.npy: "), "message was: {err}");
        }
    }

    #[test]
    fn missing_file_error_names_the_path() {
        let path = temp_path("does-not-exist.npy");
        let err = read_npy(&path).expect_err("no such file");
        assert!(err.to_string().contains(&path.display().to_string()), "message was: {err}");
    }

    #[test]
    fn refuses_to_write_an_array_whose_data_does_not_fill_its_shape() {
        let malformed = Array { shape: vec![2, 2], data: Data::I64(vec![1, 2, 3]) };
        let err = write_npy_bytes(&malformed, "bad.npy").expect_err("inconsistent array");
        assert!(err.to_string().contains("bad.npy"), "message was: {err}");
    }
}
