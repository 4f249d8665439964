//! PyTorch's CPU f32 summation orders (`aten/src/ATen/native/cpu/SumKernel.cpp`, `cascade_sum`),
//! so that the reductions of the reference's delta rule (the L2 norms, the recurrent form's
//! sums) round as they do there. Kept apart from the delta rule: it is an emulation of a
//! library's kernel, not part of the model. The sum kernel is dispatched with AVX2 even on
//! AVX-512 machines, so a vector holds 8 floats.

/// `Vectorized<float>::size()` of the sum kernel.
const TORCH_SUM_LANES: usize = 8;
/// `ilp_factor` of `row_sum`.
const TORCH_SUM_ILP: usize = 4;
/// `num_levels` of `multi_row_sum`.
const TORCH_SUM_LEVELS: usize = 4;

/// `c10::llvm::CeilLog2`: `ceil(log2(value))`, 0 for 0 and 1.
fn ceil_log2(value: usize) -> usize {
    if value <= 1 {
        0
    } else {
        (usize::BITS - (value - 1).leading_zeros()) as usize
    }
}

/// `multi_row_sum`: sums `size` rows of `width` independent lanes (`load(row, lane)`), each lane a
/// 4-level cascade of running sums in blocks of `2^max(4, ceil_log2(size)/4)` rows.
fn multi_row_sum(size: usize, width: usize, load: impl Fn(usize, usize) -> f32) -> Vec<f32> {
    let level_power = (ceil_log2(size) / TORCH_SUM_LEVELS).max(4);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = vec![vec![0f32; width]; TORCH_SUM_LEVELS];
    let mut i = 0;
    while i + level_step <= size {
        for _ in 0..level_step {
            for (lane, a) in acc[0].iter_mut().enumerate() {
                *a += load(i, lane);
            }
            i += 1;
        }
        for level in 1..TORCH_SUM_LEVELS {
            let (lower, upper) = acc.split_at_mut(level);
            for (hi, lo) in upper[0].iter_mut().zip(lower[level - 1].iter_mut()) {
                *hi += *lo;
                *lo = 0.0;
            }
            if i & (level_mask << (level * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        for (lane, a) in acc[0].iter_mut().enumerate() {
            *a += load(i, lane);
        }
        i += 1;
    }
    let (first, rest) = acc.split_at_mut(1);
    for level in rest.iter() {
        for (a, &b) in first[0].iter_mut().zip(level) {
            *a += b;
        }
    }
    acc.swap_remove(0)
}

/// `row_sum`: sums `size` rows of `width` lanes as `ilp_factor` interleaved chains of rows
/// ([`multi_row_sum`] over row groups), the leftover rows into chain 0, then the chains in order.
fn row_sum(size: usize, width: usize, load: impl Fn(usize, usize) -> f32) -> Vec<f32> {
    let groups = size / TORCH_SUM_ILP;
    let chains = multi_row_sum(groups, TORCH_SUM_ILP * width, |g, c| load(g * TORCH_SUM_ILP + c / width, c % width));
    let mut sum = chains[..width].to_vec();
    for row in groups * TORCH_SUM_ILP..size {
        for (lane, s) in sum.iter_mut().enumerate() {
            *s += load(row, lane);
        }
    }
    for chain in chains[width..].chunks_exact(width) {
        for (s, &c) in sum.iter_mut().zip(chain) {
            *s += c;
        }
    }
    sum
}

/// The sum of a contiguous row as PyTorch's `x.sum(-1)` computes it (`vectorized_inner_sum`, or
/// `scalar_inner_sum` for rows shorter than a vector).
pub(super) fn torch_inner_sum(x: &[f32]) -> f32 {
    let n = x.len();
    if n < TORCH_SUM_LANES {
        return row_sum(n, 1, |i, _| x[i])[0];
    }
    let vectors = n / TORCH_SUM_LANES;
    let lanes = row_sum(vectors, TORCH_SUM_LANES, |i, lane| x[i * TORCH_SUM_LANES + lane]);
    let mut sum = 0f32;
    for &v in &x[vectors * TORCH_SUM_LANES..] {
        sum += v;
    }
    for v in lanes {
        sum += v;
    }
    sum
}

/// Column sums of a row-major `[rows, cols]` product as PyTorch's `.sum(dim=-2)` computes them
/// (`vectorized_outer_sum` / `scalar_outer_sum`): whole blocks of 4 vectors of columns (4 columns
/// when there are fewer than a vector) by [`multi_row_sum`] over all rows, the other columns by
/// [`row_sum`]. `out` receives the `cols` sums.
pub(super) fn torch_outer_sum(rows: usize, cols: usize, load: impl Fn(usize, usize) -> f32, out: &mut [f32]) {
    let block = if cols >= TORCH_SUM_LANES { TORCH_SUM_ILP * TORCH_SUM_LANES } else { TORCH_SUM_ILP };
    let cascaded = cols / block * block;
    if cascaded > 0 {
        out[..cascaded].copy_from_slice(&multi_row_sum(rows, cascaded, &load));
    }
    for (col, o) in out.iter_mut().enumerate().take(cols).skip(cascaded) {
        *o = row_sum(rows, 1, |r, _| load(r, col))[0];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic test values of varied magnitude: `(h / 10007 − 0.5) · 2^(h mod 13 − 6)` with
    /// `h = (7919 i + 104729 seed) mod 10007`, exact in f32 (numpy computes the same).
    fn spread_values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i * 7919 + seed * 104729) % 10007;
                (h as f32 / 10007.0 - 0.5) * 2f32.powi((h % 13) as i32 - 6)
            })
            .collect()
    }

    /// PyTorch's `x.sum(-1)` and `m.sum(-2)` of [`spread_values`] (f32 bit patterns, torch 2.x on
    /// x86-64), which a plain running sum does not reproduce.
    #[test]
    fn torch_summation_orders_reproduce_pytorch_bit_for_bit() {
        for (n, bits) in [(5usize, 0x41a0c05bu32), (128, 0xc0fef038), (203, 0x411f1f13)] {
            let x = spread_values(n, n);
            let got = torch_inner_sum(&x);
            assert!(
                got.to_bits() == bits,
                "inner sum of {n} values: {got} ({:#x}), PyTorch {} ({bits:#x}); running sum {}",
                got.to_bits(),
                f32::from_bits(bits),
                x.iter().sum::<f32>()
            );
        }
        let outer: [(usize, usize, &[u32]); 3] =
            [(128, 37, &TORCH_OUTER_128_37), (70, 6, &TORCH_OUTER_70_6), (300, 40, &TORCH_OUTER_300_40)];
        for (rows, cols, bits) in outer {
            let m = spread_values(rows * cols, rows);
            let mut got = vec![0f32; cols];
            torch_outer_sum(rows, cols, |r, c| m[r * cols + c], &mut got);
            for (c, (&g, &b)) in got.iter().zip(bits).enumerate() {
                assert!(
                    g.to_bits() == b,
                    "column {c} of the [{rows}, {cols}] outer sum: {g} ({:#x}), PyTorch {} ({b:#x})",
                    g.to_bits(),
                    f32::from_bits(b)
                );
            }
        }
    }

    /// Where the orders part: 5 values (under a vector: the scalar kernel's four chains, not a
    /// running sum), 8 values (one vector: a running sum, not the scalar chains), and more
    /// than 2^19 rows (the cascade's blocks grow from 16 to 32 rows). Bits from PyTorch 2.15,
    /// one thread, for the same `spread_values`.
    #[test]
    fn torch_summation_orders_hold_at_the_kernels_boundaries() {
        for (n, seed, bits) in [(5usize, 2usize, 0xc0b420a0u32), (8, 2, 0x3efb1624)] {
            let got = torch_inner_sum(&spread_values(n, seed));
            assert!(
                got.to_bits() == bits,
                "inner sum of {n} values (seed {seed}): {:#x}, PyTorch {bits:#x}",
                got.to_bits()
            );
        }
        let (rows, cols) = ((1 << 19) + 12345, 32);
        let m = spread_values(rows * cols, 3);
        let mut got = vec![0f32; cols];
        torch_outer_sum(rows, cols, |r, c| m[r * cols + c], &mut got);
        for (c, (&g, &b)) in got.iter().zip(&TORCH_OUTER_LONG).enumerate() {
            assert!(
                g.to_bits() == b,
                "column {c} of the [{rows}, {cols}] outer sum: {:#x}, PyTorch {b:#x}",
                g.to_bits()
            );
        }
    }

    #[test]
    fn ceil_log2_rounds_up_like_llvm_ceil_log2() {
        let cases = [(0, 0), (1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (1 << 20, 20), ((1 << 20) + 1, 21)];
        for (value, expected) in cases {
            assert_eq!(ceil_log2(value), expected, "ceil_log2({value})");
        }
    }

    const TORCH_OUTER_LONG: [u32; 32] = [
        0x434ff254, 0x42e27b70, 0x432b66a6, 0x433b59ef, 0x431815e9, 0x4373ebce, 0x42c1cdcc, 0x4366ffae, 0x42e047c4,
        0x433ee12c, 0x430d63c7, 0x430ae4e3, 0x4364f646, 0x4313bd49, 0x435fba77, 0x42c9adb5, 0x43438536, 0x42f02b87,
        0x43322fdb, 0x431ea5db, 0x42d420cd, 0x43809d40, 0x4303f3f0, 0x435c44ac, 0x42b176d0, 0x431e8fde, 0x43212fb8,
        0x432a298c, 0x434849eb, 0x42fa46ba, 0x4363f5d4, 0x42f86f2f,
    ];

    const TORCH_OUTER_128_37: [u32; 37] = [
        0x400cbc30, 0xc1c88dd4, 0x417b7e2c, 0x419505ee, 0x41a6583c, 0x412e85e7, 0xc1519998, 0x41401d29, 0x40f2f124,
        0x41be4ebd, 0xc1125e6b, 0xbf5730c0, 0x4102b62c, 0xc21c8f26, 0x40a529ab, 0xc2106385, 0x41f430cc, 0xc1c8b450,
        0x421d2061, 0x40842927, 0xc17350b4, 0x4184cd02, 0xc103ae4a, 0x40ee183e, 0xc212478d, 0x4202d722, 0xc15604d2,
        0x414410a8, 0xc145a642, 0xc10deb2a, 0x4206db82, 0x400e863c, 0x42156499, 0xc0d6a0f2, 0xc1819089, 0xbf1aef70,
        0xc14148c4,
    ];
    const TORCH_OUTER_70_6: [u32; 6] = [0xc23b5e06, 0xc26d2407, 0x40e56ebf, 0x41517ee8, 0x421a6bff, 0x422304f0];
    const TORCH_OUTER_300_40: [u32; 40] = [
        0xc1222cb2, 0xc27b88b0, 0x416432cc, 0xc08a3ef0, 0x424bb39e, 0xc05e6688, 0x42141b7c, 0xc0b40d38, 0xc25ce643,
        0xc1b7775f, 0xc2598335, 0x42088674, 0xc0f0a498, 0x429f6a60, 0x41fda4d0, 0xc1ce1c50, 0x421e6742, 0xc216d7fa,
        0x3fde91c0, 0xc212daa5, 0x419e91ee, 0x400847e0, 0xc2138ea2, 0x429a2298, 0x414e67b6, 0x42800dd6, 0xc15e02a1,
        0x410e2ac0, 0xc18c5fcd, 0xc28b5bc5, 0x40f1983c, 0xc228f0ea, 0x42982bd5, 0x4138f982, 0xbff803e0, 0x42481065,
        0xc231a741, 0x4127344c, 0xc2267d7d, 0x3f9daad0,
    ];
}
