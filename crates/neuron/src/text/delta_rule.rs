//! The gated delta rule of the Gated DeltaNet layers, mirroring `torch_chunk_gated_delta_rule`
//! and `torch_recurrent_gated_delta_rule` (`transformers/models/qwen3_5/modeling_qwen3_5.py`)
//! with `use_qk_l2norm_in_kernel=True` and `output_final_state=True`: both start from an optional
//! initial state (zeros when none, as the reference's `initial_state=None`) and return the state
//! after the last token, which the cache carries to the next forward.
//!
//! Both forms compute, per value head with state `S` (`[d_k, d_v]`) and for each token `t` in
//! order:
//!
//! ```text
//! S   ← exp(g_t) · S
//! S   ← S + k_t ⊗ β_t (v_t − Sᵀ k_t)
//! o_t = Sᵀ q_t
//! ```
//!
//! with `q`, `k` L2-normalised (`x · rsqrt(Σx² + 1e-6)`) after the key heads are repeated onto the
//! value heads (`repeat_interleave`: key head `i` serves value heads `i·r .. (i+1)·r`), and `q` then
//! scaled by `1/√d_k`. The recurrent form is this loop (the reference's one-token decode step); the
//! chunked form (its prefill, and any later chunk of more than one token) processes 64 tokens at a
//! time with the UT transform of the DeltaNet paper. The operations follow
//! the reference in order and in f32, with PyTorch's CPU rounding where it can be reproduced: the
//! f64-accumulated `cumsum`, and the summation order of `sum` (the L2 norms, and all reductions of
//! the recurrent form) — see `torch_sum.rs`. Matmuls (gemm vs MKL),
//! the triangular solve and `exp` (libm vs SLEEF) round differently, so the chunked form agrees
//! with PyTorch's to about 1e-8 on outputs of magnitude 0.03, not bit for bit.
//!
//! Precision in a bf16 model: the reference's own upcasts are these functions' prologue and
//! epilogue, reproduced as written — `x.transpose(1, 2).to(torch.float32)` for q, k, v, β and g
//! (every computation here is f32), `core_attn_out.to(initial_dtype)` (the output rounded to
//! the input's dtype once), and the state in f32 (`torch.zeros(..., dtype=new_values.dtype)`,
//! `initial_state.to(new_values)`), which the cache then keeps in f32.

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor, D};

use super::torch_sum::{torch_inner_sum, torch_outer_sum};

/// The chunk length of `torch_chunk_gated_delta_rule`'s default (and of the model's call).
pub const CHUNK_SIZE: usize = 64;

/// The two numbers the reference functions fix in code: the `l2norm` eps and the query scale.
/// The defaults are the reference's; the model takes them from
/// [`crate::config::TextConstants`], so a test can change them at load time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeltaRuleConstants {
    /// `l2norm(query, dim=-1, eps=1e-6)` (and key), with `use_qk_l2norm_in_kernel=True`.
    pub l2norm_eps: f64,
    /// `None` is the reference's scale: `query * query.shape[-1] ** -0.5` (chunked) and
    /// `query / query.shape[-1] ** 0.5` (recurrent), rounded as each does; `Some(s)`
    /// multiplies by `s` instead.
    pub query_scale: Option<f64>,
}

impl Default for DeltaRuleConstants {
    fn default() -> Self {
        DeltaRuleConstants { l2norm_eps: 1e-6, query_scale: None }
    }
}

/// The inputs after grouping, layout change and L2 normalisation — the common prologue of both
/// reference functions. `q`, `k`: `[heads, seq, d_k]`; `v`: `[heads, seq, d_v]`; `g`, `beta`:
/// `[heads, seq]`; all contiguous f32, `heads` being the number of value heads.
struct Prologue {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    out_dtype: DType,
}

impl Prologue {
    fn seq(&self) -> usize {
        self.v.dims()[1]
    }
    fn heads(&self) -> usize {
        self.v.dims()[0]
    }
    fn d_k(&self) -> usize {
        self.k.dims()[2]
    }
    fn d_v(&self) -> usize {
        self.v.dims()[2]
    }
}

/// `l2norm(x, dim=-1, eps=1e-6)`: `x * rsqrt((x * x).sum(-1, keepdim=True) + eps)`, with the sum
/// in PyTorch's order ([`torch_inner_sum`]) and `rsqrt` as `1 / sqrt` (which PyTorch's f32 CPU
/// `rsqrt` is, bit for bit).
fn l2norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let mut data = x.flatten_all()?.to_vec1::<f32>()?;
    let eps = eps as f32;
    let mut squares = vec![0f32; d];
    for row in data.chunks_exact_mut(d) {
        for (sq, &v) in squares.iter_mut().zip(row.iter()) {
            *sq = v * v;
        }
        let inv_norm = 1.0 / (torch_inner_sum(&squares) + eps).sqrt();
        row.iter_mut().for_each(|v| *v *= inv_norm);
    }
    Ok(Tensor::from_vec(data, x.shape(), x.device())?)
}

/// `x.repeat_interleave(repeats, dim=1)` for `x: [seq, heads, d]`.
fn repeat_interleave_heads(x: &Tensor, repeats: usize) -> Result<Tensor> {
    if repeats == 1 {
        return Ok(x.clone());
    }
    let (s, h, d) = x.dims3()?;
    Ok(x.unsqueeze(2)?.expand((s, h, repeats, d))?.reshape((s, h * repeats, d))?)
}

/// Checks shapes, repeats the key heads onto the value heads, moves heads first, converts to f32
/// and L2-normalises `q` and `k` — in the reference's order.
fn prologue(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    g: &Tensor,
    beta: &Tensor,
    l2norm_eps: f64,
) -> Result<Prologue> {
    let (s, hk, dk) = key.dims3()?;
    let (sv, hv, _dv) = value.dims3()?;
    ensure!(query.dims() == key.dims(), "query {:?} and key {:?} shapes differ", query.dims(), key.dims());
    ensure!(sv == s, "value has {sv} positions, key has {s}");
    ensure!(g.dims() == [s, hv], "g has shape {:?}, expected [{s}, {hv}]", g.dims());
    ensure!(beta.dims() == [s, hv], "beta has shape {:?}, expected [{s}, {hv}]", beta.dims());
    ensure!(hk > 0 && dk > 0, "key has shape {:?}", key.dims());
    ensure!(hv % hk == 0, "{hv} value heads are not a multiple of {hk} key heads");
    let out_dtype = query.dtype();

    let repeats = hv / hk;
    let query = repeat_interleave_heads(query, repeats)?;
    let key = repeat_interleave_heads(key, repeats)?;

    let heads_first = |x: &Tensor| -> Result<Tensor> { Ok(x.transpose(0, 1)?.to_dtype(DType::F32)?.contiguous()?) };
    let (q, k, v, beta, g) =
        (heads_first(&query)?, heads_first(&key)?, heads_first(value)?, heads_first(beta)?, heads_first(g)?);
    let q = l2norm(&q, l2norm_eps)?;
    let k = l2norm(&k, l2norm_eps)?;
    Ok(Prologue { q, k, v, g, beta, out_dtype })
}

/// The state the recurrence starts from, `[heads, d_k, d_v]` in f32 (`initial_state.to(value)`):
/// the given one, or zeros (`initial_state=None`).
fn initial_state(p: &Prologue, given: Option<&Tensor>) -> Result<Tensor> {
    let shape = [p.heads(), p.d_k(), p.d_v()];
    match given {
        Some(state) => {
            ensure!(state.dims() == shape, "initial state has shape {:?}, expected {shape:?}", state.dims());
            Ok(state.to_dtype(DType::F32)?.contiguous()?)
        }
        None => Ok(Tensor::zeros(&shape, DType::F32, &Device::Cpu)?),
    }
}

/// `[heads, seq, d_v]` → `[seq, heads, d_v]` in the input dtype.
fn epilogue(out: Tensor, dtype: DType) -> Result<Tensor> {
    Ok(out.transpose(0, 1)?.contiguous()?.to_dtype(dtype)?)
}

/// Within-chunk cumulative sum of the log decay, `decay.reshape(..., -1, chunk).cumsum(dim=3)`.
/// PyTorch's CPU `cumsum` of f32 accumulates in f64 and rounds each partial sum to f32; so does
/// this. `decay`: `[heads, chunks·chunk]` row-major.
fn chunk_cumsum(decay: &[f32], chunk: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(decay.len());
    for block in decay.chunks(chunk) {
        let mut acc = 0f64;
        for &x in block {
            acc += x as f64;
            out.push(acc as f32);
        }
    }
    out
}

/// `exp(cum_i − cum_j)` for `j ≤ i` and 0 above the diagonal (the reference fills the strictly
/// upper triangle of the difference with −inf before `exp`). `cum`: `[blocks·chunk]` → `[blocks, chunk, chunk]`.
fn pairwise_decay(cum: &[f32], chunk: usize) -> Vec<f32> {
    let mut out = vec![0f32; cum.len() * chunk];
    for (block, dst) in cum.chunks(chunk).zip(out.chunks_mut(chunk * chunk)) {
        for i in 0..chunk {
            for j in 0..=i {
                dst[i * chunk + j] = (block[i] - block[j]).exp();
            }
        }
    }
    out
}

/// `torch.linalg.solve_triangular(l, b, upper=False, unitriangular=True)`: solves `L X = B` with
/// the diagonal of `L` taken as 1 (its stored diagonal and upper triangle are ignored), by forward
/// substitution `X_i = B_i − Σ_{j<i} L_ij X_j`. `l`: `[batch, n, n]`, `b`: `[batch, n, m]`.
fn solve_unit_lower(l: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (batch, n, n2) = l.dims3()?;
    let (batch_b, nb, m) = b.dims3()?;
    ensure!(n == n2 && n == nb && batch == batch_b, "solve_unit_lower: l {:?}, b {:?}", l.dims(), b.dims());
    let l = l.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let mut x = b.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    for (lb, xb) in l.chunks_exact(n * n).zip(x.chunks_exact_mut(n * m)) {
        for i in 1..n {
            let (solved, rest) = xb.split_at_mut(i * m);
            let row = &mut rest[..m];
            for (j, xj) in solved.chunks_exact(m).enumerate() {
                let lij = lb[i * n + j];
                for (r, &s) in row.iter_mut().zip(xj) {
                    *r -= lij * s;
                }
            }
        }
    }
    Ok(Tensor::from_vec(x, (batch, n, m), &Device::Cpu)?)
}

/// Mirrors `torch_chunk_gated_delta_rule(..., initial_state, output_final_state=True,
/// use_qk_l2norm_in_kernel=True)`.
///
/// `query`, `key`: `[seq, num_k_heads, d_k]`; `value`: `[seq, num_v_heads, d_v]`; `g` (log decay,
/// ≤ 0) and `beta`: `[seq, num_v_heads]`. `num_v_heads` is a multiple of `num_k_heads`; each key
/// head serves `num_v_heads / num_k_heads` consecutive value heads. `initial_state`:
/// `[num_v_heads, d_k, d_v]`, zeros when `None`. Returns the output `[seq, num_v_heads, d_v]` and
/// the final state `[num_v_heads, d_k, d_v]` (f32).
pub fn chunk_gated_delta_rule(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    g: &Tensor,
    beta: &Tensor,
    chunk_size: usize,
    initial_state: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let constants = DeltaRuleConstants::default();
    chunk_gated_delta_rule_with(query, key, value, g, beta, chunk_size, initial_state, constants)
}

/// [`chunk_gated_delta_rule`] with the given [`DeltaRuleConstants`].
#[allow(clippy::too_many_arguments)]
pub fn chunk_gated_delta_rule_with(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    g: &Tensor,
    beta: &Tensor,
    chunk_size: usize,
    initial_state: Option<&Tensor>,
    constants: DeltaRuleConstants,
) -> Result<(Tensor, Tensor)> {
    ensure!(chunk_size > 0, "chunk_size must be positive");
    ensure!(query.device().is_cpu(), "chunk_gated_delta_rule runs on the CPU");
    let p = prologue(query, key, value, g, beta, constants.l2norm_eps)?;
    let (h, s, dk, dv) = (p.heads(), p.seq(), p.d_k(), p.d_v());
    let mut state = self::initial_state(&p, initial_state)?;
    if s == 0 {
        return Ok((epilogue(Tensor::zeros((h, 0, dv), DType::F32, &Device::Cpu)?, p.out_dtype)?, state));
    }
    let c = chunk_size;

    // query = query * head_dim ** -0.5 (the Python float, applied as f32)
    let q = p.q.affine(constants.query_scale.unwrap_or((dk as f64).powf(-0.5)), 0.0)?;

    // Zero padding at the end to a multiple of the chunk size.
    let n = s.div_ceil(c);
    let pad = n * c - s;
    let q = q.pad_with_zeros(1, 0, pad)?;
    let k = p.k.pad_with_zeros(1, 0, pad)?;
    let v = p.v.pad_with_zeros(1, 0, pad)?;
    let beta = p.beta.pad_with_zeros(1, 0, pad)?;
    let decay = p.g.pad_with_zeros(1, 0, pad)?;

    let beta = beta.unsqueeze(2)?;
    let v_beta = v.broadcast_mul(&beta)?;
    let k_beta = k.broadcast_mul(&beta)?;

    // [heads, chunks, chunk, d]
    let q = q.reshape((h, n, c, dk))?;
    let k = k.reshape((h, n, c, dk))?;
    let k_beta = k_beta.reshape((h, n, c, dk))?;
    let v_beta = v_beta.reshape((h, n, c, dv))?;

    let cum = chunk_cumsum(&decay.flatten_all()?.to_vec1::<f32>()?, c);
    let pairwise = Tensor::from_vec(pairwise_decay(&cum, c), (h, n, c, c), &Device::Cpu)?;
    let cum = Tensor::from_vec(cum, (h, n, c), &Device::Cpu)?;
    let cum_exp = cum.exp()?.unsqueeze(3)?;

    let k_t = k.transpose(2, 3)?;
    let ut_system = (k_beta.matmul(&k_t)? * &pairwise)?;
    let intra_chunk_attn = (q.matmul(&k_t)? * &pairwise)?;
    let decayed_k_beta = k_beta.broadcast_mul(&cum_exp)?;

    // Both solves share the system: solve once for [v_beta | decayed_k_beta].
    let rhs = Tensor::cat(&[&v_beta, &decayed_k_beta], 3)?.reshape((h * n, c, dv + dk))?;
    let solved = solve_unit_lower(&ut_system.reshape((h * n, c, c))?, &rhs)?.reshape((h, n, c, dv + dk))?;
    let new_values = solved.narrow(3, 0, dv)?;
    let k_cumdecay = solved.narrow(3, dv, dk)?;

    // Decays applied once rather than in each chunk.
    let q = q.broadcast_mul(&cum_exp)?;
    let cum_last = cum.narrow(2, c - 1, 1)?;
    let k = k.broadcast_mul(&cum_last.broadcast_sub(&cum)?.exp()?.unsqueeze(3)?)?;
    let chunk_decay = cum_last.exp()?; // [heads, chunks, 1]

    let chunk_of = |x: &Tensor, i: usize| -> Result<Tensor> { Ok(x.narrow(1, i, 1)?.squeeze(1)?.contiguous()?) };
    let mut outputs = Vec::with_capacity(n);
    for i in 0..n {
        let v_new = (chunk_of(&new_values, i)? - chunk_of(&k_cumdecay, i)?.matmul(&state)?)?;
        let inter_chunk_attn = chunk_of(&q, i)?.matmul(&state)?;
        outputs.push((inter_chunk_attn + chunk_of(&intra_chunk_attn, i)?.matmul(&v_new)?)?);
        let decay = chunk_of(&chunk_decay, i)?.unsqueeze(2)?; // [heads, 1, 1]
        let update = chunk_of(&k, i)?.transpose(1, 2)?.matmul(&v_new)?;
        state = (state.broadcast_mul(&decay)? + update)?;
    }
    // The padding after the last token has g = 0 and k = 0: it leaves the final state as it is.
    let out = Tensor::cat(&outputs, 1)?.narrow(1, 0, s)?;
    Ok((epilogue(out, p.out_dtype)?, state))
}

/// Mirrors `torch_recurrent_gated_delta_rule(..., initial_state, output_final_state=True,
/// use_qk_l2norm_in_kernel=True)`: the token-by-token recurrence, which the reference runs for a
/// one-token step with a cached state. Same arguments and results as [`chunk_gated_delta_rule`]
/// (without the chunk size).
pub fn recurrent_gated_delta_rule(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    g: &Tensor,
    beta: &Tensor,
    initial_state: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    recurrent_gated_delta_rule_with(query, key, value, g, beta, initial_state, DeltaRuleConstants::default())
}

/// [`recurrent_gated_delta_rule`] with the given [`DeltaRuleConstants`].
pub fn recurrent_gated_delta_rule_with(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    g: &Tensor,
    beta: &Tensor,
    initial_state: Option<&Tensor>,
    constants: DeltaRuleConstants,
) -> Result<(Tensor, Tensor)> {
    ensure!(query.device().is_cpu(), "recurrent_gated_delta_rule runs on the CPU");
    let p = prologue(query, key, value, g, beta, constants.l2norm_eps)?;
    let (h, s, dk, dv) = (p.heads(), p.seq(), p.d_k(), p.d_v());
    let mut states = self::initial_state(&p, initial_state)?.flatten_all()?.to_vec1::<f32>()?;

    // query = query / head_dim ** 0.5 (a true division by the f32-rounded scalar)
    let sqrt_dk = (dk as f64).powf(0.5) as f32;
    let scale = |x: f32| constants.query_scale.map_or(x / sqrt_dk, |s| x * s as f32);
    let q: Vec<f32> = p.q.flatten_all()?.to_vec1::<f32>()?.into_iter().map(scale).collect();
    let k = p.k.flatten_all()?.to_vec1::<f32>()?;
    let v = p.v.flatten_all()?.to_vec1::<f32>()?;
    let g = p.g.flatten_all()?.to_vec1::<f32>()?;
    let beta = p.beta.flatten_all()?.to_vec1::<f32>()?;

    let mut out = vec![0f32; h * s * dv];
    let mut kv_mem = vec![0f32; dv];
    let mut delta = vec![0f32; dv];
    for (head, state) in states.chunks_exact_mut(dk * dv).enumerate() {
        for t in 0..s {
            let row = head * s + t;
            let (q_t, k_t) = (&q[row * dk..(row + 1) * dk], &k[row * dk..(row + 1) * dk]);
            let v_t = &v[row * dv..(row + 1) * dv];
            let o_t = &mut out[row * dv..(row + 1) * dv];
            // state = state * exp(g_t)
            let decay_t = g[row].exp();
            state.iter_mut().for_each(|sv| *sv *= decay_t);
            // kv_mem = (state * k_t[:, None]).sum(-2)
            torch_outer_sum(dk, dv, |r, c| state[r * dv + c] * k_t[r], &mut kv_mem);
            // delta = (v_t - kv_mem) * beta_t
            let beta_t = beta[row];
            for ((d, &vv), &m) in delta.iter_mut().zip(v_t).zip(&kv_mem) {
                *d = (vv - m) * beta_t;
            }
            // state = state + k_t[:, None] * delta[None, :]
            for (srow, &kk) in state.chunks_exact_mut(dv).zip(k_t) {
                for (sv, &d) in srow.iter_mut().zip(&delta) {
                    *sv += kk * d;
                }
            }
            // o_t = (state * q_t[:, None]).sum(-2)
            torch_outer_sum(dk, dv, |r, c| state[r * dv + c] * q_t[r], o_t);
        }
    }
    let out = epilogue(Tensor::from_vec(out, (h, s, dv), &Device::Cpu)?, p.out_dtype)?;
    Ok((out, Tensor::from_vec(states, (h, dk, dv), &Device::Cpu)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: a tiny seeded generator of uniform f32 in [0, 1).
    struct Rng(u64);

    impl Rng {
        fn uniform(&mut self) -> f32 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32) / (1u64 << 24) as f32
        }
        fn range(&mut self, lo: f32, hi: f32) -> f32 {
            lo + (hi - lo) * self.uniform()
        }
        fn vec(&mut self, n: usize, f: impl Fn(&mut Self) -> f32) -> Vec<f32> {
            (0..n).map(|_| f(self)).collect()
        }
    }

    struct Inputs {
        q: Tensor,
        k: Tensor,
        v: Tensor,
        g: Tensor,
        beta: Tensor,
    }

    /// Random inputs shaped like the model's: unit-scale q/k/v, `g = −exp(a)·softplus(b)` clamped
    /// to [−2, 0] (many near 0, i.e. long memory), `beta = sigmoid(·)` in (0, 1).
    fn random_inputs(seed: u64, seq: usize, hk: usize, hv: usize, dk: usize, dv: usize) -> Inputs {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let dev = Device::Cpu;
        let q = rng.vec(seq * hk * dk, |r| r.range(-1.0, 1.0));
        let k = rng.vec(seq * hk * dk, |r| r.range(-1.0, 1.0));
        let v = rng.vec(seq * hv * dv, |r| r.range(-1.0, 1.0));
        let g = rng.vec(seq * hv, |r| {
            let (a, b) = (r.range(-4.0, 0.5), r.range(-4.0, 3.0));
            (-a.exp() * (1.0 + b.exp()).ln()).max(-2.0)
        });
        let beta = rng.vec(seq * hv, |r| 1.0 / (1.0 + (-r.range(-4.0, 4.0)).exp()));
        Inputs {
            q: Tensor::from_vec(q, (seq, hk, dk), &dev).unwrap(),
            k: Tensor::from_vec(k, (seq, hk, dk), &dev).unwrap(),
            v: Tensor::from_vec(v, (seq, hv, dv), &dev).unwrap(),
            g: Tensor::from_vec(g, (seq, hv), &dev).unwrap(),
            beta: Tensor::from_vec(beta, (seq, hv), &dev).unwrap(),
        }
    }

    fn chunked(x: &Inputs) -> Tensor {
        chunk_gated_delta_rule(&x.q, &x.k, &x.v, &x.g, &x.beta, CHUNK_SIZE, None).unwrap().0
    }

    fn recurrent(x: &Inputs) -> Tensor {
        recurrent_gated_delta_rule(&x.q, &x.k, &x.v, &x.g, &x.beta, None).unwrap().0
    }

    fn values3(t: &Tensor) -> Vec<Vec<Vec<f32>>> {
        t.to_vec3::<f32>().unwrap()
    }

    /// The largest |a − b| and its index: [seq, head, d] of an output, [head, d_k, d_v] of a state.
    fn max_diff(a: &Tensor, b: &Tensor) -> (f32, [usize; 3]) {
        assert_eq!(a.dims(), b.dims(), "shapes differ");
        let (a, b) = (values3(a), values3(b));
        let mut worst = (0f32, [0; 3]);
        for (t, (at, bt)) in a.iter().zip(&b).enumerate() {
            for (h, (ah, bh)) in at.iter().zip(bt).enumerate() {
                for (d, (x, y)) in ah.iter().zip(bh).enumerate() {
                    let diff = (x - y).abs();
                    if diff > worst.0 || diff.is_nan() {
                        worst = (diff, [t, h, d]);
                    }
                }
            }
        }
        worst
    }

    #[test]
    fn chunked_and_recurrent_forms_agree_for_lengths_1_63_64_65_and_200() {
        for (seed, &seq) in [1usize, 63, 64, 65, 200].iter().enumerate() {
            for &d in &[128usize, 32] {
                let x = random_inputs(seed as u64 + 1, seq, 2, 6, d, d);
                let (c, r) = (chunked(&x), recurrent(&x));
                assert_eq!(c.dims(), [seq, 6, d], "chunked output shape for seq {seq}");
                let (diff, at) = max_diff(&c, &r);
                let (cv, rv) = (values3(&c)[at[0]][at[1]][at[2]], values3(&r)[at[0]][at[1]][at[2]]);
                assert!(
                    diff <= 1e-5,
                    "seq {seq}, d {d}: max |chunked − recurrent| = {diff:e} at [t {}, head {}, col {}] \
                     (chunked {cv}, recurrent {rv})",
                    at[0],
                    at[1],
                    at[2]
                );
            }
        }
    }

    #[test]
    fn chunk_size_and_padding_do_not_change_the_result() {
        let x = random_inputs(7, 45, 1, 2, 16, 8);
        let reference = recurrent(&x);
        for chunk in [1usize, 5, 16, 45, 64, 100] {
            let c = chunk_gated_delta_rule(&x.q, &x.k, &x.v, &x.g, &x.beta, chunk, None).unwrap().0;
            let (diff, at) = max_diff(&c, &reference);
            assert!(diff <= 1e-5, "chunk {chunk}: max |chunked − recurrent| = {diff:e} at {at:?}");
        }
    }

    /// A straightforward f64 transcription of the recurrence (no shared code with the functions
    /// under test), with the key head of value head `h` being `h / (hv / hk)`.
    fn naive_f64(x: &Inputs) -> Vec<Vec<Vec<f64>>> {
        let to64 = |t: &Tensor| -> Vec<Vec<Vec<f64>>> {
            values3(t)
                .into_iter()
                .map(|a| a.into_iter().map(|b| b.into_iter().map(f64::from).collect()).collect())
                .collect()
        };
        let (q, k, v) = (to64(&x.q), to64(&x.k), to64(&x.v));
        let g = x.g.to_vec2::<f32>().unwrap();
        let beta = x.beta.to_vec2::<f32>().unwrap();
        let (seq, hk, dk) = x.q.dims3().unwrap();
        let (_, hv, dv) = x.v.dims3().unwrap();
        let normalised = |u: &[f64]| -> Vec<f64> {
            let inv = 1.0 / (u.iter().map(|a| a * a).sum::<f64>() + 1e-6).sqrt();
            u.iter().map(|a| a * inv).collect()
        };
        let mut out = vec![vec![vec![0f64; dv]; hv]; seq];
        for h in 0..hv {
            let kh = h / (hv / hk);
            let mut state = vec![vec![0f64; dv]; dk];
            for t in 0..seq {
                let qt: Vec<f64> = normalised(&q[t][kh]).into_iter().map(|a| a / (dk as f64).sqrt()).collect();
                let kt = normalised(&k[t][kh]);
                let decay = (g[t][h] as f64).exp();
                state.iter_mut().flatten().for_each(|s| *s *= decay);
                for j in 0..dv {
                    let mem: f64 = (0..dk).map(|i| state[i][j] * kt[i]).sum();
                    let delta = (v[t][h][j] - mem) * beta[t][h] as f64;
                    (0..dk).for_each(|i| state[i][j] += kt[i] * delta);
                    out[t][h][j] = (0..dk).map(|i| state[i][j] * qt[i]).sum();
                }
            }
        }
        out
    }

    #[test]
    fn both_forms_match_an_independent_f64_recurrence() {
        let x = random_inputs(11, 150, 2, 4, 24, 16);
        let expected = naive_f64(&x);
        for (name, got) in [("chunked", chunked(&x)), ("recurrent", recurrent(&x))] {
            let got = values3(&got);
            let mut worst = (0f64, [0usize; 3]);
            for (t, gt) in got.iter().enumerate() {
                for (h, gh) in gt.iter().enumerate() {
                    for (j, &a) in gh.iter().enumerate() {
                        let diff = (a as f64 - expected[t][h][j]).abs();
                        if diff > worst.0 || diff.is_nan() {
                            worst = (diff, [t, h, j]);
                        }
                    }
                }
            }
            let [t, h, j] = worst.1;
            assert!(
                worst.0 <= 1e-5,
                "{name}: max |f32 − f64 reference| = {:e} at [t {t}, head {h}, col {j}] (got {}, expected {})",
                worst.0,
                got[t][h][j],
                expected[t][h][j]
            );
        }
    }

    /// With one token the state is `k̂ ⊗ β v` (the decay only scales the zero initial state), so
    /// `o = β · v · (q̂ · k̂) / √d_k` with `x̂ = x / √(|x|² + 1e-6)`.
    #[test]
    fn a_single_token_outputs_beta_times_value_times_normalised_query_key_dot() {
        let dev = Device::Cpu;
        let (q, k) = ([3f32, 4.0, 0.0, 0.0], [0f32, 2.0, 0.0, 2.0]);
        let v = [0.5f32, -1.0, 2.0];
        let (beta, g) = (0.25f32, -0.7f32);
        let dot = (3.0 * 0.0 + 4.0 * 2.0) / (25f64 + 1e-6).sqrt() / (8f64 + 1e-6).sqrt();
        let expected: Vec<f64> = v.iter().map(|&x| beta as f64 * x as f64 * dot / 2.0).collect();
        let args = (
            Tensor::from_slice(&q, (1, 1, 4), &dev).unwrap(),
            Tensor::from_slice(&k, (1, 1, 4), &dev).unwrap(),
            Tensor::from_slice(&v, (1, 1, 3), &dev).unwrap(),
            Tensor::from_slice(&[g], (1, 1), &dev).unwrap(),
            Tensor::from_slice(&[beta], (1, 1), &dev).unwrap(),
        );
        let x = Inputs { q: args.0, k: args.1, v: args.2, g: args.3, beta: args.4 };
        for (name, got) in [("chunked", chunked(&x)), ("recurrent", recurrent(&x))] {
            let got = values3(&got)[0][0].clone();
            for (j, (&a, &e)) in got.iter().zip(&expected).enumerate() {
                assert!(
                    (a as f64 - e).abs() <= 1e-7,
                    "{name}: output[{j}] = {a}, expected β·v·(q̂·k̂)/√d = {e} (all: {got:?} vs {expected:?})"
                );
            }
        }
    }

    /// Two tokens, by hand: `S₁ = β₁ k̂₁ v₁ᵀ`; `S₂ = e^{g₂} S₁ + β₂ k̂₂ (v₂ − e^{g₂} (k̂₁·k̂₂) β₁ v₁)ᵀ`;
    /// `o₂ = S₂ᵀ q̂₂`. Orthonormal-ish keys keep the numbers readable.
    #[test]
    fn two_tokens_follow_the_decayed_delta_update_derived_by_hand() {
        let dev = Device::Cpu;
        // l2norm divides a unit vector by √(1 + 1e-6). d_k = 4: k₁ = e₀, k₂ = e₀ + e₁, q₁ = e₀, q₂ = 3e₁.
        let s = (1f64 + 1e-6).sqrt();
        let q = [1f32, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0];
        let k = [1f32, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0];
        let v = [1f32, 2.0, -3.0, 0.5];
        let (g, beta) = ([-0.3f32, -0.5], [0.8f32, 0.6]);
        let x = Inputs {
            q: Tensor::from_slice(&q, (2, 1, 4), &dev).unwrap(),
            k: Tensor::from_slice(&k, (2, 1, 4), &dev).unwrap(),
            v: Tensor::from_slice(&v, (2, 1, 2), &dev).unwrap(),
            g: Tensor::from_slice(&g, (2, 1), &dev).unwrap(),
            beta: Tensor::from_slice(&beta, (2, 1), &dev).unwrap(),
        };
        let (b1, b2, e2) = (beta[0] as f64, beta[1] as f64, (g[1] as f64).exp());
        let n2 = (2f64 + 1e-6).sqrt();
        let k1 = [1.0 / s, 0.0];
        let k2 = [1.0 / n2, 1.0 / n2];
        let q1 = [1.0 / s / 2.0, 0.0]; // / √d_k = 2
        let q2 = [0.0, 3.0 / (9f64 + 1e-6).sqrt() / 2.0];
        let dot = |a: [f64; 2], b: [f64; 2]| a[0] * b[0] + a[1] * b[1];
        let (v1, v2) = ([v[0] as f64, v[1] as f64], [v[2] as f64, v[3] as f64]);
        let o1: Vec<f64> = v1.iter().map(|x| b1 * x * dot(q1, k1)).collect();
        let o2: Vec<f64> = (0..2)
            .map(|j| e2 * b1 * v1[j] * dot(k1, q2) + b2 * (v2[j] - e2 * b1 * dot(k1, k2) * v1[j]) * dot(k2, q2))
            .collect();
        for (name, got) in [("chunked", chunked(&x)), ("recurrent", recurrent(&x))] {
            let got = values3(&got);
            for (t, expected) in [o1.clone(), o2.clone()].iter().enumerate() {
                for j in 0..2 {
                    let a = got[t][0][j] as f64;
                    assert!(
                        (a - expected[j]).abs() <= 1e-6,
                        "{name}: token {t} col {j} = {a}, expected {} (token outputs {:?} vs {expected:?})",
                        expected[j],
                        got[t][0]
                    );
                }
            }
        }
    }

    /// Key head 0 (q = k = e₀, q̂·k̂ ≈ 1) serves value heads 0 and 1, key head 1 (q = e₀, k = e₁,
    /// q̂·k̂ = 0) serves value heads 2 and 3: repeat_interleave, not tile (which would give heads
    /// 0, 2 to key head 0).
    #[test]
    fn each_key_head_serves_consecutive_value_heads_in_repeat_interleave_order() {
        let dev = Device::Cpu;
        let q = [1f32, 0.0, 0.0, 0.0, /* head 1 */ 1.0, 0.0, 0.0, 0.0];
        let k = [1f32, 0.0, 0.0, 0.0, /* head 1 */ 0.0, 1.0, 0.0, 0.0];
        let v = [1f32, 2.0, 3.0, 4.0];
        let beta = [0.5f32; 4];
        let x = Inputs {
            q: Tensor::from_slice(&q, (1, 2, 4), &dev).unwrap(),
            k: Tensor::from_slice(&k, (1, 2, 4), &dev).unwrap(),
            v: Tensor::from_slice(&v, (1, 4, 1), &dev).unwrap(),
            g: Tensor::zeros((1, 4), DType::F32, &dev).unwrap(),
            beta: Tensor::from_slice(&beta, (1, 4), &dev).unwrap(),
        };
        let same = 1.0 / (1f64 + 1e-6) / 2.0; // q̂·k̂ / √d_k for q = k = e₀
        let expected = [0.5 * 1.0 * same, 0.5 * 2.0 * same, 0.0, 0.0];
        for (name, got) in [("chunked", chunked(&x)), ("recurrent", recurrent(&x))] {
            let got: Vec<f32> = values3(&got)[0].iter().map(|h| h[0]).collect();
            for (h, (&a, &e)) in got.iter().zip(&expected).enumerate() {
                assert!(
                    (a as f64 - e).abs() <= 1e-7,
                    "{name}: value head {h} = {a}, expected {e} (heads {got:?} vs {expected:?})"
                );
            }
        }
    }

    /// Values printed by PyTorch (`torch_chunk_gated_delta_rule` and
    /// `torch_recurrent_gated_delta_rule` of transformers, f32, use_qk_l2norm_in_kernel=True)
    /// for these inputs.
    #[test]
    fn a_small_case_matches_values_computed_by_pytorch() {
        let dev = Device::Cpu;
        let x = torch_inputs();
        let expected = Tensor::from_slice(&TORCH_OUT, (3, 2, 3), &dev).unwrap();
        for (name, got) in [("chunked", chunked(&x)), ("recurrent", recurrent(&x))] {
            let (diff, at) = max_diff(&got, &expected);
            assert!(
                diff <= 1e-6,
                "{name}: max |ours − torch| = {diff:e} at {at:?}: ours {:?}, torch {:?}",
                values3(&got),
                values3(&expected)
            );
        }
    }

    /// A random state `[hv, dk, dv]` of the magnitude a layer's state reaches.
    fn random_state(seed: u64, hv: usize, dk: usize, dv: usize) -> Tensor {
        let mut rng = Rng(seed.wrapping_mul(0xD1B5_4A32_D192_ED03) | 1);
        Tensor::from_vec(rng.vec(hv * dk * dv, |r| r.range(-0.5, 0.5)), (hv, dk, dv), &Device::Cpu).unwrap()
    }

    /// The rows `start .. start + len` of every input.
    fn slice(x: &Inputs, start: usize, len: usize) -> Inputs {
        let cut = |t: &Tensor| t.narrow(0, start, len).unwrap();
        Inputs { q: cut(&x.q), k: cut(&x.k), v: cut(&x.v), g: cut(&x.g), beta: cut(&x.beta) }
    }

    #[test]
    fn chunked_and_recurrent_forms_agree_from_a_non_zero_initial_state_on_outputs_and_final_state() {
        for (seed, &seq) in [1usize, 63, 64, 65, 200].iter().enumerate() {
            let x = random_inputs(seed as u64 + 21, seq, 2, 6, 32, 24);
            let h0 = random_state(seed as u64 + 1, 6, 32, 24);
            let (c, cs) = chunk_gated_delta_rule(&x.q, &x.k, &x.v, &x.g, &x.beta, CHUNK_SIZE, Some(&h0)).unwrap();
            let (r, rs) = recurrent_gated_delta_rule(&x.q, &x.k, &x.v, &x.g, &x.beta, Some(&h0)).unwrap();
            let (diff, at) = max_diff(&c, &r);
            assert!(diff <= 1e-5, "seq {seq}: max |chunked − recurrent| output = {diff:e} at [t, head, col] {at:?}");
            let (diff, at) = max_diff(&cs, &rs);
            assert!(diff <= 1e-5, "seq {seq}: max |chunked − recurrent| final state = {diff:e} at [head, k, v] {at:?}");
            let (moved, _) = max_diff(&cs, &h0);
            assert!(moved > 1e-2, "seq {seq}: the final state should differ from the initial one (max |Δ| {moved:e})");
        }
    }

    /// The state after a split carries everything: a sequence run in pieces (chunked pieces,
    /// then one token at a time with the recurrent form, as prefill chunks and decode steps
    /// do) gives the outputs and final state of one chunked pass.
    #[test]
    fn a_sequence_run_in_pieces_with_the_state_carried_over_equals_one_pass() {
        let x = random_inputs(5, 140, 2, 4, 32, 16);
        let h0 = random_state(9, 4, 32, 16);
        let (whole, whole_state) =
            chunk_gated_delta_rule(&x.q, &x.k, &x.v, &x.g, &x.beta, CHUNK_SIZE, Some(&h0)).unwrap();
        let mut state = h0;
        let mut outputs = Vec::new();
        let pieces = [(0, 65), (65, 63), (128, 1), (129, 9)].into_iter().chain((138..140).map(|t| (t, 1)));
        for (i, (start, len)) in pieces.enumerate() {
            let p = slice(&x, start, len);
            let (out, next) = if i >= 4 {
                recurrent_gated_delta_rule(&p.q, &p.k, &p.v, &p.g, &p.beta, Some(&state)).unwrap()
            } else {
                chunk_gated_delta_rule(&p.q, &p.k, &p.v, &p.g, &p.beta, CHUNK_SIZE, Some(&state)).unwrap()
            };
            outputs.push(out);
            state = next;
        }
        let (diff, at) = max_diff(&Tensor::cat(&outputs, 0).unwrap(), &whole);
        assert!(diff <= 1e-5, "max |pieces − one pass| output = {diff:e} at [t, head, col] {at:?}");
        let (diff, at) = max_diff(&state, &whole_state);
        assert!(diff <= 1e-5, "max |pieces − one pass| final state = {diff:e} at [head, k, v] {at:?}");
    }

    /// The model's prefill passes no state; a zero state must not change a bit of it (the
    /// checked-in dumps and the mutation tests are strict).
    #[test]
    fn a_zero_initial_state_gives_the_result_of_none_bit_for_bit() {
        let x = random_inputs(3, 130, 2, 6, 32, 32);
        let zeros = Tensor::zeros((6, 32, 32), DType::F32, &Device::Cpu).unwrap();
        let (a, sa) = chunk_gated_delta_rule(&x.q, &x.k, &x.v, &x.g, &x.beta, CHUNK_SIZE, None).unwrap();
        let (b, sb) = chunk_gated_delta_rule(&x.q, &x.k, &x.v, &x.g, &x.beta, CHUNK_SIZE, Some(&zeros)).unwrap();
        assert_eq!((max_diff(&a, &b).0, max_diff(&sa, &sb).0), (0.0, 0.0), "chunked: None vs zeros");
        let (a, sa) = recurrent_gated_delta_rule(&x.q, &x.k, &x.v, &x.g, &x.beta, None).unwrap();
        let (b, sb) = recurrent_gated_delta_rule(&x.q, &x.k, &x.v, &x.g, &x.beta, Some(&zeros)).unwrap();
        assert_eq!((max_diff(&a, &b).0, max_diff(&sa, &sb).0), (0.0, 0.0), "recurrent: None vs zeros");
    }

    #[test]
    fn an_initial_state_of_the_wrong_shape_is_an_error_naming_both_shapes() {
        let x = random_inputs(1, 3, 1, 2, 8, 4);
        let wrong = Tensor::zeros((2, 4, 8), DType::F32, &Device::Cpu).unwrap();
        for err in [
            chunk_gated_delta_rule(&x.q, &x.k, &x.v, &x.g, &x.beta, CHUNK_SIZE, Some(&wrong)).unwrap_err(),
            recurrent_gated_delta_rule(&x.q, &x.k, &x.v, &x.g, &x.beta, Some(&wrong)).unwrap_err(),
        ] {
            let err = err.to_string();
            assert!(err.contains("[2, 4, 8]") && err.contains("[2, 8, 4]"), "{err}");
        }
    }

    /// The inputs PyTorch's printed values below were computed for: 3 tokens, 1 key head of 4
    /// dims serving 2 value heads of 3 dims.
    fn torch_inputs() -> Inputs {
        let dev = Device::Cpu;
        Inputs {
            q: Tensor::from_slice(&TORCH_Q, (3, 1, 4), &dev).unwrap(),
            k: Tensor::from_slice(&TORCH_K, (3, 1, 4), &dev).unwrap(),
            v: Tensor::from_slice(&TORCH_V, (3, 2, 3), &dev).unwrap(),
            g: Tensor::from_slice(&TORCH_G, (3, 2), &dev).unwrap(),
            beta: Tensor::from_slice(&TORCH_BETA, (3, 2), &dev).unwrap(),
        }
    }

    /// Outputs and final state printed by PyTorch for the inputs of the case above and an
    /// initial state (`initial_state=H0, output_final_state=True`).
    #[test]
    fn a_small_case_from_an_initial_state_matches_pytorch_outputs_and_final_state() {
        let dev = Device::Cpu;
        let x = torch_inputs();
        let h0 = Tensor::from_slice(&TORCH_H0, (2, 4, 3), &dev).unwrap();
        let expected = Tensor::from_slice(&TORCH_OUT_FROM_H0, (3, 2, 3), &dev).unwrap();
        let expected_state = Tensor::from_slice(&TORCH_STATE_FROM_H0, (2, 4, 3), &dev).unwrap();
        let chunked = chunk_gated_delta_rule(&x.q, &x.k, &x.v, &x.g, &x.beta, CHUNK_SIZE, Some(&h0)).unwrap();
        let recurrent = recurrent_gated_delta_rule(&x.q, &x.k, &x.v, &x.g, &x.beta, Some(&h0)).unwrap();
        for (name, (out, state)) in [("chunked", chunked), ("recurrent", recurrent)] {
            let (diff, at) = max_diff(&out, &expected);
            assert!(diff <= 1e-6, "{name}: max |ours − torch| output = {diff:e} at [t, head, col] {at:?}");
            let (diff, at) = max_diff(&state, &expected_state);
            assert!(diff <= 1e-6, "{name}: max |ours − torch| final state = {diff:e} at [head, k, v] {at:?}");
        }
    }

    // torch.manual_seed(1234); q, k = randn(1, 3, 1, 4) each; v = randn(1, 3, 2, 3) * 2;
    // g = -rand(1, 3, 2) * 1.5; beta = rand(1, 3, 2); out = torch_chunk_gated_delta_rule(q, k, v, g,
    // beta, chunk_size=64, use_qk_l2norm_in_kernel=True)[0] (the recurrent form is within 1.2e-7).
    #[rustfmt::skip]
    const TORCH_Q: [f32; 12] = [
        0.046130463, 0.40240282, -1.0115291, 0.21673824, -0.6122731, 0.50361073, 0.2309668, 0.6930773, -0.26686057,
        2.1784658, 0.1021373, -0.2590097
    ];
    #[rustfmt::skip]
    const TORCH_K: [f32; 12] = [
        -0.1549004, -1.3705889, -0.13192043, 0.8848398, -0.2610768, 0.61041707, -0.009842321, -1.4473404,
        -0.20389928, 0.87375337, -0.68161094, 0.63386935
    ];
    #[rustfmt::skip]
    const TORCH_V: [f32; 18] = [
        3.1969953, -0.09372112, 0.3650713, -0.14739552, 0.6293569, -2.0738015, 0.42008394, 1.2288549, -0.11038844,
        -1.2250897, -3.5939367, 1.7456355, 1.5339292, -0.22756244, -1.8856385, 1.5080442, 0.27297997, -4.6663322
    ];
    #[rustfmt::skip]
    const TORCH_G: [f32; 6] = [-0.26623902, -0.66648746, -0.18442655, -1.4456388, -1.1542802, -0.056756258];
    #[rustfmt::skip]
    const TORCH_BETA: [f32; 6] = [0.22394311, 0.6772411, 0.5274025, 0.63250464, 0.09096044, 0.23227984];
    #[rustfmt::skip]
    const TORCH_OUT: [f32; 18] = [
        -0.045755554, 0.0013413413, -0.0052249185, 0.0063795745, -0.027239833, 0.0897583, -0.075861946, -0.100375004,
        0.0044275895, 0.123383075, 0.34804022, -0.14587215, -0.0009663105, 0.047857206, -0.06334745, -0.08032929,
        -0.5725814, 0.03786339
    ];
    // After the inputs above: H0 = randn(1, 2, 4, 3) * 0.5; torch_chunk_gated_delta_rule(...,
    // initial_state=H0, output_final_state=True) (the recurrent form is within 3.6e-7).
    #[rustfmt::skip]
    const TORCH_H0: [f32; 24] = [
        -0.7518969, -0.16433679, 0.3693963, 0.79516727, -0.09736812, -0.1207433, 0.66022366, 0.7998485, 0.6877272,
        0.49942365, 0.07747448, -0.3263077, 0.35897762, -0.22475734, -0.35930374, 0.34196433, 0.45389178, 0.24241108,
        -0.079180546, 0.6613134, -1.3398225, -0.064837135, -0.3459795, 0.59317726
    ];
    #[rustfmt::skip]
    const TORCH_OUT_FROM_H0: [f32; 18] = [
        -0.14447744, -0.2871995, -0.28220943, 0.04954977, -0.17261118, 0.4571486, 0.32061568, -0.018450037,
        -0.092134215, 0.116406225, 0.36593956, -0.1237797, 0.07625957, 0.048757173, -0.07653009, -0.07509543,
        -0.5632832, 0.049725473
    ];
    #[rustfmt::skip]
    const TORCH_STATE_FROM_H0: [f32; 24] = [
        -0.21782087, -0.064966954, 0.10084675, 0.14199804, 0.061343983, -0.16581884, 0.04342609, 0.1654541,
        0.21991658, 0.1331104, -0.18479216, -0.104474455, 0.11155182, 0.3079417, 0.015876807, -0.03287329,
        -0.8772439, -0.0932336, -0.17283934, 0.0780367, 0.44890624, 0.82328075, 1.9578226, -1.4729654
    ];
}
