//! A bf16 × bf16 → f32 GEMM for linear layers: `out[i, j] = Σ_p x[i, p] · w[j, p]`, with the
//! weight `w [n, k]` (nn.Linear's layout) packed once, at load, into [`PackedBf16`] — or left
//! where it is stored (a mapped checkpoint) and packed one micro-panel at a time inside each
//! call ([`PackedBf16::in_place`], see "A weight read in place" below).
//!
//! # Kernel
//!
//! On a CPU with AVX-512 BF16 the inner instruction is `VDPBF16PS zmm_acc, zmm_w, zmm_x`: for
//! each of its 16 f32 lanes it multiplies two bf16 pairs and adds both products to the lane's
//! accumulator. A lane therefore covers one output column and *two depths* (2q, 2q+1), so
//!
//! - a packed weight register holds 16 columns × 2 depths, interleaved:
//!   `[w(j, 2q), w(j, 2q+1)]` for j = 0..16, one 32-bit slot per column;
//! - x's two bf16 at (i, 2q..2q+2) are read as one 32-bit value and broadcast to all lanes.
//!
//! The micro-kernel computes `MR` = 12 rows × `NR` = 32 columns of the output (12 broadcasts
//! of x, two registers of w, 24 accumulators) for a k-block of up to `KCP` = 512 depth pairs.
//! In L1 it runs at 96 % of two `VDPBF16PS` per cycle (measured on this host, an AMD EPYC).
//! On a CPU without AVX-512 BF16 a portable kernel (plain Rust, the compiler vectorises it)
//! reads the same packed layout, widens bf16 to f32 (exact) and sums in f32, depth by depth.
//!
//! # Layout of the packed weight
//!
//! The n columns are cut into panels of `NR` = 32 (the last one zero-padded), k into `kp` =
//! ⌈k/2⌉ depth pairs (an odd k gets one zero depth). Panels are grouped in blocks of `NB` = 4,
//! and the packed weight is stored in exactly the order the loops read it:
//!
//! ```text
//! [block of NB panels][k-block of KCP pairs][panel in the block][pair q][column 0..32][depth 2q, 2q+1]
//! ```
//!
//! so one (panel, k-block) micro-panel is 32 × 2 × 512 bf16 = 64 KiB, contiguous and 64-byte
//! aligned, and a thread walking its panels streams the packed weight sequentially, once per
//! call. The packed weight takes the weight's own bytes plus the padding of the last panel
//! (and of an odd k).
//!
//! # Loop order and threads
//!
//! `matmul` packs x per call, `[k-block][group of MR rows][pair q][row 0..12]` as 32-bit pairs
//! (zero-padded for an odd k) — the same bytes as x itself, freed on return. Then, per thread:
//! for each block of panels, for each k-block, for each panel, for each group of rows: one
//! micro-kernel call. The micro-panel of w (64 KiB) stays in L1/L2 while the row groups go
//! past it; x's k-slice (rows × 1024 depths × 2 bytes, 567 KiB for 277 rows) is contiguous and
//! stays in L2; the output tile of a block (rows × 128 columns) stays in L2 between k-blocks.
//! The first k-block stores its sums, the later ones add theirs to the stored f32 values.
//! (A first version packed x as `[group][pair q][row]`, a k-block's group slices strided by
//! the whole of k, with KCP = 256 and a short last k-block: 41-51 % of the peak, against 82-89 %
//! with this layout and equal k-blocks, on a shared host, so not all of that gap may be the
//! layout. On one core KCP = 128, 256, 384 measured 2-8 % slower than 512.)
//!
//! Threads (rayon's) split the panels between them, or the row groups when that balances
//! better (few panels, many rows). A decode step (1-16 rows, one group) therefore splits the
//! panels: each thread streams its share of the weight once, which is what bounds it.
//!
//! # Numerics
//!
//! A bf16 × bf16 product is exact in f32 (8 + 8 significant bits; outside the subnormal range),
//! so the only error is the f32 summation. The tests check, against an f64 sum of the same
//! bf16 inputs, `|got − exact| ≤ k · 2⁻²⁴ · Σ_p |x·w|` (the classical bound for k − 1
//! rounded additions, with margin), for both kernels, and bit-exact results on inputs where
//! every partial sum is exact in f32.
//!
//! `VDPBF16PS` adds a pair's two products to the accumulator as two rounded f32 additions,
//! the odd depth's product first, as Intel's pseudo-code documents (the test
//! `the_avx512_kernel_adds_the_odd_depth_of_a_pair_first` pins it on this CPU); the portable
//! kernel adds the depths in order. It also treats subnormal inputs as zero and flushes
//! subnormal results to zero (DAZ/FTZ, whatever MXCSR says); the portable kernel keeps
//! subnormals (`subnormals_are_flushed_by_the_avx512_kernel_and_kept_by_the_portable_one`).
//!
//! # A weight read in place
//!
//! Packing at load copies the whole weight onto fresh pages before the first answer. A weight
//! in a mapped bf16 checkpoint is already in the page cache, as transformers uses it, so
//! [`PackedBf16::in_place`] keeps a reference to it and each call packs each (panel, k-block)
//! micro-panel into a 64 KiB buffer of its thread just before the micro-kernel reads it, then
//! reuses the buffer for the next one. The buffer holds exactly the bytes the packed layout
//! holds at that place, and the micro-kernels are the same, so both forms give the same bits
//! (`a_weight_read_in_place_gives_the_packed_weights_bits`). With AVX-512 the micro-panel is
//! packed by 16 × 16 transposes of 32-bit depth pairs in registers (16 rows of w, one cache line
//! each, in; 16 pair-rows out): the weight is read once per call, as the packed one is, and
//! the transposes cost a few percent of a prefill's products.
//!
//! # Sizes
//!
//! `matmul` panics, naming the sizes, when x does not hold rows · k values or out does not
//! hold rows · n; zero rows is a valid empty product (nothing is written).

use std::sync::Arc;

use rayon::prelude::*;

/// Columns of the output per panel (two zmm registers of 16 f32 lanes).
const NR: usize = 32;
/// zmm registers per panel.
const NV: usize = NR / 16;
/// Rows of x per micro-kernel call (the row groups x is packed in).
const MR: usize = 12;
/// Depth pairs per k-block at most: a micro-panel of w is NR × 2 × KCP bf16 = 64 KiB (L1
/// holds 48; L2 feeds the rest fast enough), the output tile is read and written once per
/// k-block. The k-blocks of a weight are of equal size (the last one maybe smaller), see
/// [`k_block`].
const KCP: usize = 512;

/// The k-block size for kp depth pairs: ⌈kp / ⌈kp/KCP⌉⌉, so that k = 1152 (576 pairs) runs as
/// 2 × 288 and k = 4304 (2152 pairs) as 5 × 431 rather than 4 × 512 + 104 (a short block pays
/// the output's reload for little work).
fn k_block(kp: usize) -> usize {
    kp.div_ceil(kp.div_ceil(KCP).max(1)).max(1)
}
/// Panels per block: the output tile a thread keeps in L2 between k-blocks is rows × NB·NR.
const NB: usize = 4;

/// Which kernel a product runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// `VDPBF16PS` on zmm registers (x86-64 with AVX-512F and AVX-512 BF16).
    Avx512Bf16,
    /// Plain Rust: bf16 widened to f32, multiplied and added in f32.
    Portable,
}

impl Kernel {
    /// The kernel this CPU runs.
    pub(crate) fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16") {
                return Kernel::Avx512Bf16;
            }
        }
        Kernel::Portable
    }
}

/// Which kernel runs on this CPU: "avx512bf16" or "portable".
pub fn kernel_name() -> &'static str {
    match Kernel::detect() {
        Kernel::Avx512Bf16 => "avx512bf16",
        Kernel::Portable => "portable",
    }
}

/// 64 bytes, 64-byte aligned: the unit the packed weight is allocated in, so that every
/// (panel, pair) row of 32 columns × 2 bf16 is one aligned zmm pair.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u16; 32]);

/// A bf16 weight [n, k] (nn.Linear's layout: n output features, k inputs) packed for the kernel.
pub struct PackedBf16 {
    n: usize,
    k: usize,
    /// Depth pairs, ⌈k/2⌉.
    kp: usize,
    /// Depth pairs per k-block, [`k_block`]`(kp)`.
    kc: usize,
    /// Panels of NR columns, ⌈n/NR⌉.
    panels: usize,
    data: Data,
}

/// Where a weight's bits are.
enum Data {
    /// Packed at load, in the layout of the module doc.
    Packed(Vec<Line>),
    /// As stored, [n, k] row-major; packed micro-panel by micro-panel inside each call.
    InPlace(Arc<dyn Bf16Rows>),
}

/// A bf16 matrix [n, k], row-major, held elsewhere (a mapped checkpoint's tensor).
pub trait Bf16Rows: Send + Sync {
    /// The n·k values.
    fn values(&self) -> &[half::bf16];
}

impl Bf16Rows for Vec<half::bf16> {
    fn values(&self) -> &[half::bf16] {
        self
    }
}

/// A raw pointer that threads writing disjoint parts of one buffer can share.
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    /// The pointer (a method, so that a closure captures the whole Send wrapper, not its field).
    fn get(self) -> *mut T {
        self.0
    }
}

impl PackedBf16 {
    /// Packs w (row-major [n, k]); on all rayon threads.
    pub fn pack(w: &[half::bf16], n: usize, k: usize) -> PackedBf16 {
        assert_eq!(w.len(), n * k, "PackedBf16::pack: w has {} values, expected n·k = {n}·{k} = {}", w.len(), n * k);
        let kp = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let mut data = vec![Line([0; 32]); (panels * NR * 2 * kp).div_ceil(32)];
        let kc = k_block(kp);
        let lines = SendPtr(data.as_mut_ptr());
        // One task per panel (panels are disjoint in the layout), each micro-panel packed as a
        // weight read in place packs it per call, straight to its place.
        (0..panels).into_par_iter().with_min_len(4).for_each(|jw| {
            for qc in (0..kp).step_by(kc) {
                let kc_len = kc.min(kp - qc);
                // offset() counts bf16; a micro-panel starts on a pair-row, 2 lines of 32.
                let at = Self::offset(jw, qc, kp, kc, panels) / 32;
                // SAFETY: the micro-panel of (jw, qc) is kc_len pair-rows (2·kc_len lines) from
                // line `at`, inside data; panels write disjoint ranges.
                let dst = unsafe { std::slice::from_raw_parts_mut(lines.get().add(at), 2 * kc_len) };
                pack_micro_panel(w, n, k, jw, qc, kc_len, dst);
            }
        });
        PackedBf16 { n, k, kp, kc: k_block(kp), panels, data: Data::Packed(data) }
    }

    /// The weight w [n, k] (row-major) where it is, packed per call (see the module doc): no
    /// copy and no work now. Panics if it does not hold n·k values.
    pub fn in_place(w: Arc<dyn Bf16Rows>, n: usize, k: usize) -> PackedBf16 {
        let len = w.values().len();
        assert_eq!(len, n * k, "PackedBf16::in_place: w has {len} values, expected n·k = {n}·{k} = {}", n * k);
        let kp = k.div_ceil(2);
        PackedBf16 { n, k, kp, kc: k_block(kp), panels: n.div_ceil(NR), data: Data::InPlace(w) }
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes held (for memory accounting): the packed copy, nothing for a weight read in place.
    pub fn bytes(&self) -> usize {
        match &self.data {
            Data::Packed(data) => data.len() * std::mem::size_of::<Line>(),
            Data::InPlace(_) => 0,
        }
    }

    /// Whether the weight is read where it is stored and packed per call.
    pub fn is_in_place(&self) -> bool {
        matches!(self.data, Data::InPlace(_))
    }

    /// Index (in bf16) of pair q, column 0 of panel jw in the packed layout.
    fn offset(jw: usize, q: usize, kp: usize, kc: usize, panels: usize) -> usize {
        let block = jw / NB;
        let l = jw % NB;
        let nb_len = NB.min(panels - block * NB);
        let qc = q / kc * kc;
        let kc_len = kc.min(kp - qc);
        2 * NR * (block * NB * kp + qc * nb_len + l * kc_len + (q - qc))
    }

    /// A buffer for one micro-panel (KCP pair-rows of NR columns), for a weight packed per call.
    fn panel_buffer(&self) -> Vec<Line> {
        match self.data {
            Data::Packed(_) => Vec::new(),
            Data::InPlace(_) => vec![Line([0; 32]); self.kc * 2 * NR / 32],
        }
    }

    /// The micro-panel of panel jw, pairs qc..qc + kc_len: in the packed weight, or packed into
    /// `buffer` (from [`Self::panel_buffer`]) from the weight as stored.
    fn micro_panel(&self, jw: usize, qc: usize, kc_len: usize, buffer: &mut [Line]) -> *const u16 {
        match &self.data {
            // SAFETY: offset(jw, qc) is inside the packed data (the layout of the module doc).
            Data::Packed(data) => unsafe {
                (data.as_ptr() as *const u16).add(Self::offset(jw, qc, self.kp, self.kc, self.panels))
            },
            Data::InPlace(w) => {
                pack_micro_panel(w.values(), self.n, self.k, jw, qc, kc_len, buffer);
                buffer.as_ptr() as *const u16
            }
        }
    }

    /// out[i·n + j] = Σ_p x[i·k + p] · w[j·k + p] for i < rows, accumulated in f32 (bf16 × bf16
    /// products are exact in f32), no bias, no rounding; overwrites out. Parallel over rayon's
    /// threads. Panics if x.len() ≠ rows·k or out.len() ≠ rows·n.
    pub fn matmul(&self, x: &[half::bf16], rows: usize, out: &mut [f32]) {
        self.matmul_with(Kernel::detect(), x, rows, out)
    }

    /// [`Self::matmul`] on the given kernel (the tests run both).
    pub(crate) fn matmul_with(&self, kernel: Kernel, x: &[half::bf16], rows: usize, out: &mut [f32]) {
        let (n, k) = (self.n, self.k);
        assert_eq!(
            x.len(),
            rows * k,
            "PackedBf16::matmul: x has {} values, expected rows·k = {rows}·{k} = {}",
            x.len(),
            rows * k
        );
        assert_eq!(
            out.len(),
            rows * n,
            "PackedBf16::matmul: out has {} values, expected rows·n = {rows}·{n} = {}",
            out.len(),
            rows * n
        );
        if rows == 0 || n == 0 {
            return;
        }
        if k == 0 {
            out.fill(0.0);
            return;
        }
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Bf16 => {
                assert!(
                    Kernel::detect() == Kernel::Avx512Bf16,
                    "PackedBf16::matmul: the AVX-512 BF16 kernel was asked for on a CPU without it"
                );
                self.matmul_avx512(x, rows, out)
            }
            _ => self.matmul_portable(x, rows, out),
        }
    }

    /// Who computes what: thread t of `threads` takes panels p0..p1 and row groups g0..g1
    /// (of `unit` rows). Splits the panels, or the row groups when that balances better.
    fn split(&self, groups: usize, threads: usize, t: usize) -> (usize, usize, usize, usize) {
        let imbalance = |units: usize| units.div_ceil(threads) as f64 * threads as f64 / units as f64;
        if imbalance(self.panels) <= imbalance(groups) {
            (self.panels * t / threads, self.panels * (t + 1) / threads, 0, groups)
        } else {
            (0, self.panels, groups * t / threads, groups * (t + 1) / threads)
        }
    }

    /// Runs `work(p0, p1, g0, g1)` on each of rayon's threads, with the split of [`Self::split`].
    fn on_threads(&self, groups: usize, work: impl Fn(usize, usize, usize, usize) + Sync) {
        let threads = rayon::current_num_threads().max(1);
        (0..threads).into_par_iter().for_each(|t| {
            let (p0, p1, g0, g1) = self.split(groups, threads, t);
            if p0 < p1 && g0 < g1 {
                work(p0, p1, g0, g1)
            }
        });
    }

    /// The blocks of NB panels that panels p0..p1 touch, as (block, first panel, end panel,
    /// panels in the block).
    fn blocks(&self, p0: usize, p1: usize) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        (p0 / NB..p1.div_ceil(NB)).map(move |block| {
            let nb_len = NB.min(self.panels - block * NB);
            ((block * NB).max(p0), (block * NB + nb_len).min(p1), nb_len)
        })
    }

    #[cfg(target_arch = "x86_64")]
    fn matmul_avx512(&self, x: &[half::bf16], rows: usize, out: &mut [f32]) {
        let (k, kp) = (self.k, self.kp);
        let groups = rows.div_ceil(MR);
        // x packed as [k-block][group][pair q][row]: the micro-kernel reads 12 consecutive
        // 32-bit pairs per depth pair, one sequential stream, and a k-block's slice for all
        // rows is contiguous (it stays in L2 while the panels go past). Zero rows pad the last
        // group (never read) and a zero depth pads an odd k (times the weight's zero depth).
        let mut xp = vec![0u32; groups * MR * kp];
        let kc = self.kc;
        xp.par_chunks_mut(groups * MR * kc).enumerate().for_each(|(kb, slice)| {
            let qc = kb * kc;
            let kc_len = kc.min(kp - qc);
            for g in 0..groups {
                for r in 0..MR.min(rows - g * MR) {
                    let i = g * MR + r;
                    let row = &x[i * k + 2 * qc..i * k + (2 * (qc + kc_len)).min(k)];
                    for (q, pair) in row.chunks(2).enumerate() {
                        let lo = pair[0].to_bits() as u32;
                        let hi = pair.get(1).map_or(0, |v| v.to_bits() as u32);
                        slice[(g * kc_len + q) * MR + r] = lo | hi << 16;
                    }
                }
            }
        });
        let xp = &xp;
        let c = SendPtr(out.as_mut_ptr());
        self.on_threads(groups, |p0, p1, g0, g1| {
            // SAFETY: the CPU has the features (checked by matmul_with); threads write disjoint
            // panels or row groups of out, whose size was checked.
            unsafe { self.compute_avx512(xp.as_ptr(), rows, c.get(), p0, p1, g0, g1) }
        });
    }

    /// Panels p0..p1 × row groups g0..g1 of the output.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn compute_avx512(
        &self,
        xp: *const u32,
        rows: usize,
        c: *mut f32,
        p0: usize,
        p1: usize,
        g0: usize,
        g1: usize,
    ) {
        let (n, kp) = (self.n, self.kp);
        let groups = rows.div_ceil(MR);
        let mut buffer = self.panel_buffer();
        for (bp0, bp1, _) in self.blocks(p0, p1) {
            for qc in (0..kp).step_by(self.kc) {
                let kc_len = self.kc.min(kp - qc);
                for jw in bp0..bp1 {
                    let wp = self.micro_panel(jw, qc, kc_len, &mut buffer);
                    let cols = (n - jw * NR).min(NR);
                    let masks = masks(cols);
                    for g in g0..g1 {
                        let r = (rows - g * MR).min(MR);
                        let xpp = xp.add(qc * groups * MR + g * MR * kc_len);
                        let cp = c.add(g * MR * n + jw * NR);
                        // A last panel of at most 16 real columns needs one register, not two.
                        if cols > 16 {
                            avx512::dispatch::<2>(r, kc_len, wp, xpp, cp, n, qc > 0, masks);
                        } else {
                            avx512::dispatch::<1>(r, kc_len, wp, xpp, cp, n, qc > 0, masks);
                        }
                    }
                }
            }
        }
    }

    /// The portable kernel: reads x as it is and the packed weight, widens both to f32 (exact)
    /// and adds the products depth by depth in f32. Rows in groups of 4, columns in halves of
    /// 16, so that the compiler keeps the 4 × 16 sums in vector registers.
    pub(crate) fn matmul_portable(&self, x: &[half::bf16], rows: usize, out: &mut [f32]) {
        const PR: usize = 4;
        let groups = rows.div_ceil(PR);
        let c = SendPtr(out.as_mut_ptr());
        self.on_threads(groups, |p0, p1, g0, g1| {
            let mut buffer = self.panel_buffer();
            for (bp0, bp1, _) in self.blocks(p0, p1) {
                for qc in (0..self.kp).step_by(self.kc) {
                    let kc_len = self.kc.min(self.kp - qc);
                    for jw in bp0..bp1 {
                        let wp = self.micro_panel(jw, qc, kc_len, &mut buffer);
                        // SAFETY: the micro-panel of (jw, qc) is kc_len pair-rows of 2·NR bf16.
                        let wp = unsafe { std::slice::from_raw_parts(wp, kc_len * 2 * NR) };
                        let cols = (self.n - jw * NR).min(NR);
                        for h in 0..cols.div_ceil(16) {
                            for g in g0..g1 {
                                let i0 = g * PR;
                                let r = (rows - i0).min(PR);
                                portable_tile::<PR>(self, x, wp, (i0, r), (qc, kc_len), (jw, h), c);
                            }
                        }
                    }
                }
            }
        });
    }
}

/// Packs the micro-panel of panel jw, pairs qc..qc + kc_len, of w [n, k] (row-major) into
/// `dst`: kc_len pair-rows of NR columns × 2 depths, zero past n and past k, the bytes
/// [`PackedBf16::pack`] puts at that place.
#[allow(clippy::too_many_arguments)]
fn pack_micro_panel(w: &[half::bf16], n: usize, k: usize, jw: usize, qc: usize, kc_len: usize, dst: &mut [Line]) {
    pack_micro_panel_with(true, w, n, k, jw, qc, kc_len, dst)
}

/// [`pack_micro_panel`], by the AVX-512 transposes when `vector` and the CPU has them, else
/// element by element (the tests run both).
#[allow(clippy::too_many_arguments)]
fn pack_micro_panel_with(
    vector: bool,
    w: &[half::bf16],
    n: usize,
    k: usize,
    jw: usize,
    qc: usize,
    kc_len: usize,
    dst: &mut [Line],
) {
    assert!(dst.len() * 32 >= kc_len * 2 * NR, "a micro-panel of {kc_len} pairs into {} lines", dst.len());
    #[cfg(target_arch = "x86_64")]
    {
        if vector && avx512::can_pack() {
            // SAFETY: the CPU has AVX-512F and BW (checked); the sizes were checked above and by
            // the caller (w holds n·k values).
            unsafe { avx512::pack_micro_panel(w, n, k, jw, qc, kc_len, dst.as_mut_ptr() as *mut u16) };
            return;
        }
    }
    let dst = &mut bytemuck_lines(dst)[..kc_len * 2 * NR];
    for (q, pair_row) in dst.chunks_exact_mut(2 * NR).enumerate() {
        let p = 2 * (qc + q);
        for (lane, slot) in pair_row.chunks_exact_mut(2).enumerate() {
            let j = jw * NR + lane;
            let at = |d: usize| if j < n && d < k { w[j * k + d].to_bits() } else { 0 };
            slot[0] = at(p);
            slot[1] = at(p + 1);
        }
    }
}

/// The lines as their bf16 bits.
fn bytemuck_lines(lines: &mut [Line]) -> &mut [u16] {
    // SAFETY: a Line is 32 u16 with no padding (repr(C)); the slice covers the same bytes.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr() as *mut u16, lines.len() * 32) }
}

/// bf16 bits → f32: the bf16 is the f32's upper half (exact).
#[inline(always)]
fn widen(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Output rows i0..i0+r, columns 16h..16h+16 of panel jw, for the pairs qc..qc+kc_len whose
/// packed weight is wp; the first k-block stores its sums, later ones add theirs.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn portable_tile<const PR: usize>(
    w: &PackedBf16,
    x: &[half::bf16],
    wp: &[u16],
    (i0, r): (usize, usize),
    (qc, kc_len): (usize, usize),
    (jw, h): (usize, usize),
    c: SendPtr<f32>,
) {
    let (n, k) = (w.n, w.k);
    let mut acc = [[0f32; 16]; PR];
    for q in 0..kc_len {
        let pair_row = &wp[q * 2 * NR + h * 32..q * 2 * NR + h * 32 + 32];
        let mut even = [0f32; 16];
        let mut odd = [0f32; 16];
        for l in 0..16 {
            even[l] = widen(pair_row[2 * l]);
            odd[l] = widen(pair_row[2 * l + 1]);
        }
        let p = 2 * (qc + q);
        for (ri, acc) in acc.iter_mut().enumerate().take(r) {
            let row = &x[(i0 + ri) * k..(i0 + ri + 1) * k];
            let xe = widen(row[p].to_bits());
            // An odd k's padding depth: its weight is zero, and so is this x.
            let xo = if p + 1 < k { widen(row[p + 1].to_bits()) } else { 0.0 };
            for l in 0..16 {
                acc[l] += xe * even[l];
            }
            for l in 0..16 {
                acc[l] += xo * odd[l];
            }
        }
    }
    let j0 = jw * NR + h * 16;
    let cols = (n - j0).min(16);
    for (ri, acc) in acc.iter().enumerate().take(r) {
        // SAFETY: row i0 + ri < rows and columns j0..j0 + cols < n are inside out (size checked);
        // this thread owns them.
        let dst = unsafe { std::slice::from_raw_parts_mut(c.get().add((i0 + ri) * n + j0), cols) };
        if qc == 0 {
            dst.copy_from_slice(&acc[..cols]);
        } else {
            for (d, a) in dst.iter_mut().zip(acc) {
                *d += a;
            }
        }
    }
}

/// Store masks of the two 16-lane halves of a panel with `cols` real columns.
#[cfg(target_arch = "x86_64")]
fn masks(cols: usize) -> [u16; NV] {
    let mut m = [0u16; NV];
    for (v, m) in m.iter_mut().enumerate() {
        let c = cols.saturating_sub(16 * v).min(16);
        *m = if c == 16 { 0xffff } else { ((1u32 << c) - 1) as u16 };
    }
    m
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{MR, NR, NV};

    /// Whether this CPU has what [`pack_micro_panel`] needs (AVX-512F and BW), detected once.
    pub(super) fn can_pack() -> bool {
        static CAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *CAN.get_or_init(|| is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw"))
    }

    /// [`super::pack_micro_panel`] by 16 × 16 transposes of 32-bit depth pairs: per half of the
    /// panel (16 columns) and per 16 pairs, the 16 rows' 64 bytes are loaded (masked past k, zero
    /// past n), transposed in registers, and stored as 16 pair-rows' halves.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn pack_micro_panel(
        w: &[half::bf16],
        n: usize,
        k: usize,
        jw: usize,
        qc: usize,
        kc_len: usize,
        dst: *mut u16,
    ) {
        let src = w.as_ptr() as *const u16;
        for half in 0..NR / 16 {
            let j0 = jw * NR + half * 16;
            for q0 in (0..kc_len).step_by(16) {
                let pairs = (kc_len - q0).min(16);
                // The depths this tile covers: 2·pairs from depth p0, fewer at the end of k.
                let p0 = 2 * (qc + q0);
                let depths = (2 * pairs).min(k - p0.min(k));
                let mask: __mmask32 = if depths >= 32 { !0 } else { (1u32 << depths) - 1 };
                let mut r = [_mm512_setzero_si512(); 16];
                for (i, r) in r.iter_mut().enumerate() {
                    if j0 + i < n {
                        *r = _mm512_maskz_loadu_epi16(mask, src.add((j0 + i) * k + p0) as *const i16);
                    }
                }
                let out = transpose16(r);
                for (q, v) in out.iter().enumerate().take(pairs) {
                    // Pair-row q0 + q is 2·NR u16 (128 bytes, 64-byte aligned); this half at +16·2.
                    _mm512_store_si512(dst.add((q0 + q) * 2 * NR + half * 32) as *mut _, *v);
                }
            }
        }
    }

    /// The 16 × 16 transpose of 32-bit elements: out[c] lane r = r[r] lane c.
    #[inline(always)]
    unsafe fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
        // Within each 128-bit lane L, t[2i] holds rows 2i, 2i+1 at columns 4L, 4L+1 and t[2i+1]
        // the same rows at 4L+2, 4L+3; then u[4g + c] holds rows 4g..4g+4 at column 4L + c.
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        let mut u = [_mm512_setzero_si512(); 16];
        for g in 0..4 {
            u[4 * g] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
            u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
            u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
            u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
        }
        // Column 4L + c gathers lane L of u[c], u[4 + c], u[8 + c], u[12 + c] (a 4 × 4 transpose
        // of 128-bit lanes).
        let mut out = [_mm512_setzero_si512(); 16];
        for c in 0..4 {
            let v0 = _mm512_shuffle_i32x4::<0x44>(u[c], u[4 + c]);
            let v1 = _mm512_shuffle_i32x4::<0xEE>(u[c], u[4 + c]);
            let v2 = _mm512_shuffle_i32x4::<0x44>(u[8 + c], u[12 + c]);
            let v3 = _mm512_shuffle_i32x4::<0xEE>(u[8 + c], u[12 + c]);
            out[c] = _mm512_shuffle_i32x4::<0x88>(v0, v2);
            out[4 + c] = _mm512_shuffle_i32x4::<0xDD>(v0, v2);
            out[8 + c] = _mm512_shuffle_i32x4::<0x88>(v1, v3);
            out[12 + c] = _mm512_shuffle_i32x4::<0xDD>(v1, v3);
        }
        out
    }

    /// The micro-kernel for `rows` (1..=MR) rows, V registers of columns.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(super) unsafe fn dispatch<const V: usize>(
        rows: usize,
        kc: usize,
        w: *const u16,
        x: *const u32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        masks: [u16; NV],
    ) {
        match rows {
            12 => kernel::<12, V>(kc, w, x, c, ldc, accumulate, masks),
            11 => kernel::<11, V>(kc, w, x, c, ldc, accumulate, masks),
            10 => kernel::<10, V>(kc, w, x, c, ldc, accumulate, masks),
            9 => kernel::<9, V>(kc, w, x, c, ldc, accumulate, masks),
            8 => kernel::<8, V>(kc, w, x, c, ldc, accumulate, masks),
            7 => kernel::<7, V>(kc, w, x, c, ldc, accumulate, masks),
            6 => kernel::<6, V>(kc, w, x, c, ldc, accumulate, masks),
            5 => kernel::<5, V>(kc, w, x, c, ldc, accumulate, masks),
            4 => kernel::<4, V>(kc, w, x, c, ldc, accumulate, masks),
            3 => kernel::<3, V>(kc, w, x, c, ldc, accumulate, masks),
            2 => kernel::<2, V>(kc, w, x, c, ldc, accumulate, masks),
            1 => kernel::<1, V>(kc, w, x, c, ldc, accumulate, masks),
            _ => unreachable!("a row group has 1..={MR} rows, not {rows}"),
        }
    }

    /// c[i, 0..16V] (+)= Σ_q Σ_e x[q·MR + i].bf16[e] · w[q·2NR + 2j + e] for i < R, over kc pairs.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    #[target_feature(enable = "avx512bf16,avx512f")]
    unsafe fn kernel<const R: usize, const V: usize>(
        kc: usize,
        w: *const u16,
        x: *const u32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        masks: [u16; NV],
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        let mut wp = w;
        let mut xp = x;
        for _ in 0..kc {
            let mut wv: [__m512bh; V] = [std::mem::transmute::<__m512i, __m512bh>(_mm512_setzero_si512()); V];
            for (v, wv) in wv.iter_mut().enumerate() {
                *wv = std::mem::transmute::<__m512i, __m512bh>(_mm512_load_si512(wp.add(32 * v) as *const _));
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                let b = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*xp.add(i) as i32));
                for v in 0..V {
                    acc[v] = _mm512_dpbf16_ps(acc[v], wv[v], b);
                }
            }
            wp = wp.add(2 * NR);
            xp = xp.add(MR);
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            let row = c.wrapping_add(i * ldc);
            for v in 0..V {
                let dst = row.wrapping_add(16 * v);
                if accumulate {
                    acc[v] = _mm512_add_ps(acc[v], _mm512_maskz_loadu_ps(masks[v], dst));
                }
                _mm512_mask_storeu_ps(dst, masks[v], acc[v]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use half::bf16;

    use super::*;

    /// 2⁻²⁴: the unit roundoff of f32.
    const U: f64 = 1.0 / (1u64 << 24) as f64;

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        /// A normal bf16 of either sign with magnitude in [2⁻⁶, 2⁴): a random 7-bit mantissa
        /// and exponent, so that the products span 2²⁰ and the sums cancel.
        fn bf16(&mut self) -> bf16 {
            let r = self.next();
            let sign = ((r >> 63) as u16) << 15;
            let exp = (127 - 6 + (r >> 8) % 10) as u16;
            bf16::from_bits(sign | exp << 7 | (r & 0x7f) as u16)
        }
        fn vec(&mut self, len: usize) -> Vec<bf16> {
            (0..len).map(|_| self.bf16()).collect()
        }
        /// A multiple of 1/8 in [-2, 2]: every product is a multiple of 1/64 below 4 in
        /// magnitude, so every partial sum of up to 2¹⁶ of them is exact in f32.
        fn grid(&mut self) -> bf16 {
            bf16::from_f32((self.next() % 33) as f32 / 8.0 - 2.0)
        }
    }

    /// The kernels this CPU can run (the portable one always).
    fn kernels() -> Vec<Kernel> {
        let mut ks = vec![Kernel::Portable];
        if Kernel::detect() == Kernel::Avx512Bf16 {
            ks.push(Kernel::Avx512Bf16);
        } else {
            eprintln!("note: this CPU lacks AVX-512 BF16; only the portable kernel is tested");
        }
        ks
    }

    /// The exact sums and Σ|x·w|, in f64 (exact here: the products of [`Rng::bf16`] values are
    /// multiples of 2⁻²⁶ below 2⁸, and their sums below 2¹⁹ in magnitude need 45 bits), with
    /// the weight read at depth `shift(p)` (identity for the true product).
    fn reference(
        x: &[bf16],
        w: &[bf16],
        rows: usize,
        k: usize,
        n: usize,
        shift: impl Fn(usize) -> usize,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut exact = vec![0.0; rows * n];
        let mut abs = vec![0.0; rows * n];
        for i in 0..rows {
            for j in 0..n {
                let (mut s, mut a) = (0.0f64, 0.0f64);
                for p in 0..k {
                    let prod = x[i * k + p].to_f64() * w[j * k + shift(p)].to_f64();
                    s += prod;
                    a += prod.abs();
                }
                exact[i * n + j] = s;
                abs[i * n + j] = a;
            }
        }
        (exact, abs)
    }

    fn run(packed: &PackedBf16, kernel: Kernel, x: &[bf16], rows: usize) -> Vec<f32> {
        // NaN-filled, so that an element the kernel forgets to write fails every comparison.
        let mut out = vec![f32::NAN; rows * packed.n()];
        packed.matmul_with(kernel, x, rows, &mut out);
        out
    }

    /// The first element where |got − exact| > k·2⁻²⁴·Σ|x·w| (NaN included), with the largest
    /// ratio error / bound seen otherwise.
    fn first_outside_bound(got: &[f32], exact: &[f64], abs: &[f64], k: usize, n: usize) -> Result<f64, String> {
        let mut worst = 0.0f64;
        for (idx, ((&g, &e), &a)) in got.iter().zip(exact).zip(abs).enumerate() {
            let bound = k as f64 * U * a;
            let err = (g as f64 - e).abs();
            if err.is_nan() || err > bound {
                return Err(format!(
                    "out[{}, {}] = {g:e} but the exact sum is {e:e}: off by {err:e} > bound {bound:e}",
                    idx / n,
                    idx % n
                ));
            }
            if bound > 0.0 {
                worst = worst.max(err / bound);
            }
        }
        Ok(worst)
    }

    #[test]
    fn both_kernels_are_within_the_f32_summation_bound_of_an_f64_sum() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut shapes = vec![];
        for rows in [1, 2, 15, 16, 17, 277] {
            for k in [1, 3, 17, 64, 255, 1152, 1153] {
                for n in [1, 15, 16, 17, 33, 100] {
                    shapes.push((rows, k, n));
                }
            }
        }
        // Many row groups at a small n (the threads then split rows), and several blocks of
        // panels with a ragged last block.
        shapes.extend([(784, 64, 33), (784, 1153, 17), (20, 600, 300)]);
        let mut worst = [0.0f64; 2];
        let mut teeth_checked = 0;
        for (rows, k, n) in shapes {
            let x = rng.vec(rows * k);
            let w = rng.vec(n * k);
            let packed = PackedBf16::pack(&w, n, k);
            let (exact, abs) = reference(&x, &w, rows, k, n, |p| p);
            for kernel in kernels() {
                let got = run(&packed, kernel, &x, rows);
                match first_outside_bound(&got, &exact, &abs, k, n) {
                    Ok(r) => worst[kernel as usize] = worst[kernel as usize].max(r),
                    Err(e) => panic!("{kernel:?} kernel, rows {rows}, k {k}, n {n}: {e}"),
                }
                // The bound has teeth: the same result against the product with the weight's
                // depths shifted by one (a plausible indexing bug) is outside it somewhere.
                if k >= 3 && kernel == Kernel::Portable {
                    let (wrong, wrong_abs) = reference(&x, &w, rows, k, n, |p| (p + 1) % k);
                    assert!(
                        first_outside_bound(&got, &wrong, &wrong_abs, k, n).is_err(),
                        "rows {rows}, k {k}, n {n}: a result with the weight's depths shifted by one is \
                         also within the bound: the bound cannot tell a wrong product"
                    );
                    teeth_checked += 1;
                }
            }
        }
        assert!(teeth_checked > 100, "only {teeth_checked} shapes checked that the bound has teeth");
        eprintln!("largest error / bound: avx512bf16 {:.3}, portable {:.3}", worst[0], worst[1]);
    }

    #[test]
    fn exact_grid_inputs_give_the_exact_sum_bit_for_bit_on_both_kernels() {
        let mut rng = Rng(7);
        for (rows, k, n) in [(1, 1, 1), (3, 2, 17), (17, 255, 33), (13, 1153, 100), (277, 64, 40), (5, 4096, 70)] {
            let x: Vec<bf16> = (0..rows * k).map(|_| rng.grid()).collect();
            let w: Vec<bf16> = (0..n * k).map(|_| rng.grid()).collect();
            let packed = PackedBf16::pack(&w, n, k);
            let (exact, _) = reference(&x, &w, rows, k, n, |p| p);
            assert!(exact.iter().any(|&e| e != 0.0), "rows {rows}, k {k}, n {n}: the exact sums are all zero");
            for kernel in kernels() {
                let got = run(&packed, kernel, &x, rows);
                for (idx, (&g, &e)) in got.iter().zip(&exact).enumerate() {
                    assert!(
                        g.to_bits() == (e as f32).to_bits() && e as f32 as f64 == e,
                        "{kernel:?} kernel, rows {rows}, k {k}, n {n}: out[{}, {}] = {g:e}, the exact sum is {e:e} \
                         (off by {:e})",
                        idx / n,
                        idx % n,
                        g as f64 - e
                    );
                }
            }
        }
    }

    #[test]
    fn the_avx512_kernel_and_the_portable_one_agree_within_the_bound() {
        if Kernel::detect() != Kernel::Avx512Bf16 {
            eprintln!("skipped: this CPU lacks AVX-512 BF16, so there is no second kernel to compare");
            return;
        }
        let mut rng = Rng(11);
        for (rows, k, n) in [(1, 5120, 200), (16, 4304, 65), (277, 1152, 100), (40, 17408, 33)] {
            let x = rng.vec(rows * k);
            let w = rng.vec(n * k);
            let packed = PackedBf16::pack(&w, n, k);
            let fast = run(&packed, Kernel::Avx512Bf16, &x, rows);
            let portable = run(&packed, Kernel::Portable, &x, rows);
            let (_, abs) = reference(&x, &w, rows, k, n, |p| p);
            let mut differ = 0;
            for (idx, ((&f, &p), &a)) in fast.iter().zip(&portable).zip(&abs).enumerate() {
                // Each is within k·u·Σ|x·w| of the exact sum, so they are within twice that.
                let bound = 2.0 * k as f64 * U * a;
                let d = (f as f64 - p as f64).abs();
                assert!(
                    d <= bound,
                    "rows {rows}, k {k}, n {n}: out[{}, {}] is {f:e} (avx512bf16) and {p:e} (portable): \
                     {d:e} apart > {bound:e}",
                    idx / n,
                    idx % n
                );
                differ += (f != p) as usize;
            }
            eprintln!("rows {rows}, k {k}, n {n}: {differ} of {} elements differ in the last bits", fast.len());
        }
    }

    /// One product x·w (k = 1 row, 1 column) on a kernel.
    fn dot(kernel: Kernel, x: &[f32], w: &[f32]) -> f32 {
        let x: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        let w: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        run(&PackedBf16::pack(&w, 1, w.len()), kernel, &x, 1)[0]
    }

    #[test]
    fn subnormals_are_flushed_by_the_avx512_kernel_and_kept_by_the_portable_one() {
        let tiny_input = f32::from_bits(0x0008_0000); // 2⁻¹³⁰, a subnormal exactly representable in bf16
        assert_eq!(bf16::from_f32(tiny_input).to_f32(), tiny_input, "2⁻¹³⁰ is not exact in bf16");
        let big = 2f32.powi(100);
        let small = 2f32.powi(-70);
        // A subnormal input times 2¹⁰⁰ is 2⁻³⁰ (normal); two normal inputs 2⁻⁷⁰ make a subnormal 2⁻¹⁴⁰.
        let cases = [
            ("subnormal input", [tiny_input, big], 2f32.powi(-30)),
            ("subnormal product", [small, small], 2f32.powi(-140)),
        ];
        for (what, [x, w], exact) in cases {
            let portable = dot(Kernel::Portable, &[x], &[w]);
            assert_eq!(portable, exact, "portable kernel, {what}: {x:e} · {w:e} gave {portable:e}, not {exact:e}");
            if Kernel::detect() != Kernel::Avx512Bf16 {
                eprintln!("skipped ({what}): this CPU lacks AVX-512 BF16");
                continue;
            }
            let fast = dot(Kernel::Avx512Bf16, &[x], &[w]);
            assert_eq!(fast, 0.0, "avx512bf16 kernel, {what}: {x:e} · {w:e} gave {fast:e}, expected the flush to 0");
        }
    }

    #[test]
    fn the_avx512_kernel_adds_the_odd_depth_of_a_pair_first() {
        // Products [1, 0, a, b] with {a, b} = {1, 2²⁴}: depth pair 0 leaves 1 in the
        // accumulator, pair 1 adds a and b. Odd depth first: 1 + 2²⁴ rounds (tie, to even) to
        // 2²⁴ and + 1 rounds to 2²⁴ again, whereas 1 + 1 + 2²⁴ = 2²⁴ + 2 exactly (so does a
        // fused sum of the pair).
        let big = 4096.0; // 4096² = 2²⁴
        let odd_big = dot_or_skip(&[1.0, 0.0, 1.0, big], &[1.0, 0.0, 1.0, big]);
        let even_big = dot_or_skip(&[1.0, 0.0, big, 1.0], &[1.0, 0.0, big, 1.0]);
        let (Some(odd_big), Some(even_big)) = (odd_big, even_big) else {
            eprintln!("skipped: this CPU lacks AVX-512 BF16");
            return;
        };
        let t24 = 2f32.powi(24);
        assert_eq!(
            odd_big, t24,
            "products [1, 0, 1, 2²⁴]: expected (1 + 2²⁴) + 1 rounded twice = 2²⁴, got {odd_big:e}"
        );
        assert_eq!(even_big, t24 + 2.0, "products [1, 0, 2²⁴, 1]: expected (1 + 1) + 2²⁴ = 2²⁴ + 2, got {even_big:e}");
        // The portable kernel adds depth by depth: 1 + 1 + 2²⁴ exactly in the first case,
        // 1 + 2²⁴ (rounded to 2²⁴) + 1 (rounded again) in the second.
        let p1 = dot(Kernel::Portable, &[1.0, 0.0, 1.0, big], &[1.0, 0.0, 1.0, big]);
        let p2 = dot(Kernel::Portable, &[1.0, 0.0, big, 1.0], &[1.0, 0.0, big, 1.0]);
        assert_eq!(
            (p1, p2),
            (t24 + 2.0, t24),
            "portable kernel: expected depth order (2²⁴ + 2, 2²⁴), got ({p1:e}, {p2:e})"
        );
    }

    fn dot_or_skip(x: &[f32], w: &[f32]) -> Option<f32> {
        (Kernel::detect() == Kernel::Avx512Bf16).then(|| dot(Kernel::Avx512Bf16, x, w))
    }

    #[test]
    fn zero_rows_is_an_empty_product_and_zero_depth_gives_zeros() {
        let w = vec![bf16::ONE; 6];
        let packed = PackedBf16::pack(&w, 3, 2);
        for kernel in kernels() {
            let mut out: Vec<f32> = vec![];
            packed.matmul_with(kernel, &[], 0, &mut out);
            let empty = PackedBf16::pack(&[], 3, 0);
            let mut out = vec![f32::NAN; 6];
            empty.matmul_with(kernel, &[], 2, &mut out);
            assert_eq!(out, vec![0.0; 6], "{kernel:?} kernel, k = 0: expected zeros, got {out:?}");
        }
    }

    #[test]
    #[should_panic(expected = "PackedBf16::matmul: out has 5 values, expected rows·n = 2·3 = 6")]
    fn an_out_shorter_than_rows_times_n_panics_naming_the_sizes() {
        let packed = PackedBf16::pack(&[bf16::ONE; 6], 3, 2);
        packed.matmul(&[bf16::ONE; 4], 2, &mut [0.0; 5]);
    }

    #[test]
    #[should_panic(expected = "PackedBf16::matmul: x has 3 values, expected rows·k = 2·2 = 4")]
    fn an_x_of_the_wrong_size_panics_naming_the_sizes() {
        let packed = PackedBf16::pack(&[bf16::ONE; 6], 3, 2);
        packed.matmul(&[bf16::ONE; 3], 2, &mut [0.0; 6]);
    }

    /// The packed bits at every place of the layout of the module doc, written out element by
    /// element: `[block][k-block][panel in block][pair][column][depth]`, zero past n and k.
    fn documented_layout(w: &[bf16], n: usize, k: usize) -> Vec<u16> {
        let (kp, panels) = (k.div_ceil(2), n.div_ceil(NR));
        let kc = k_block(kp);
        let mut out = vec![0u16; panels * NR * 2 * kp];
        for jw in 0..panels {
            for q in 0..kp {
                let off = PackedBf16::offset(jw, q, kp, kc, panels);
                for lane in 0..NR {
                    let j = jw * NR + lane;
                    for e in 0..2 {
                        let p = 2 * q + e;
                        out[off + 2 * lane + e] = if j < n && p < k { w[j * k + p].to_bits() } else { 0 };
                    }
                }
            }
        }
        out
    }

    /// Shapes that cross every edge of the packing: one column, a last panel of 1..31 columns,
    /// odd k, one k-block and several (k = 1153 and 2049 are 2 and 3 k-blocks), more than one
    /// block of NB panels.
    const EDGE_SHAPES: [(usize, usize); 9] =
        [(1, 1), (1, 2), (3, 17), (33, 31), (64, 64), (100, 1153), (161, 2049), (200, 32), (130, 1024)];

    #[test]
    fn packing_writes_the_documented_layout_for_every_edge_of_n_and_k() {
        let mut rng = Rng(3);
        for (n, k) in EDGE_SHAPES {
            let w = rng.vec(n * k);
            let packed = PackedBf16::pack(&w, n, k);
            let Data::Packed(data) = &packed.data else { panic!("pack gave a weight read in place") };
            let bits: Vec<u16> = data.iter().flat_map(|l| l.0).collect();
            let expected = documented_layout(&w, n, k);
            assert_eq!(bits.len(), expected.len(), "n {n}, k {k}: packed sizes");
            let wrong = bits.iter().zip(&expected).position(|(a, b)| a != b);
            assert!(wrong.is_none(), "n {n}, k {k}: packed bf16 {wrong:?} is not the documented layout's");
            // Micro-panel by micro-panel, element by element (the path of a CPU without AVX-512).
            let (kp, kc) = (packed.kp, packed.kc);
            for jw in 0..packed.panels {
                for qc in (0..kp).step_by(kc) {
                    let kc_len = kc.min(kp - qc);
                    let mut lines = vec![Line([0; 32]); 2 * kc_len];
                    pack_micro_panel_with(false, &w, n, k, jw, qc, kc_len, &mut lines);
                    let at = PackedBf16::offset(jw, qc, kp, kc, packed.panels);
                    let scalar: Vec<u16> = lines.iter().flat_map(|l| l.0).collect();
                    assert!(
                        scalar == expected[at..at + scalar.len()],
                        "n {n}, k {k}: the element-by-element packing of panel {jw}, pairs from {qc} differs"
                    );
                }
            }
        }
    }

    #[test]
    fn a_weight_read_in_place_gives_the_packed_weights_bits() {
        let mut rng = Rng(5);
        for (n, k) in EDGE_SHAPES {
            let w = rng.vec(n * k);
            let packed = PackedBf16::pack(&w, n, k);
            let in_place = PackedBf16::in_place(Arc::new(w), n, k);
            assert!(
                in_place.is_in_place() && in_place.bytes() == 0,
                "n {n}, k {k}: a weight read in place holds no copy"
            );
            for rows in [1, 5, 12, 13, 40] {
                let x = rng.vec(rows * k);
                for kernel in kernels() {
                    let (a, b) = (run(&packed, kernel, &x, rows), run(&in_place, kernel, &x, rows));
                    let wrong = a.iter().zip(&b).position(|(a, b)| a.to_bits() != b.to_bits());
                    assert!(
                        wrong.is_none(),
                        "{kernel:?} kernel, rows {rows}, n {n}, k {k}: out[{wrong:?}] is {:?} packed, {:?} read in place",
                        wrong.map(|i| a[i]),
                        wrong.map(|i| b[i])
                    );
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "PackedBf16::in_place: w has 5 values, expected n·k = 3·2 = 6")]
    fn a_weight_read_in_place_of_the_wrong_size_panics_naming_the_sizes() {
        PackedBf16::in_place(Arc::new(vec![bf16::ONE; 5]), 3, 2);
    }

    #[test]
    fn the_packed_weight_holds_the_weight_plus_the_padding_of_the_last_panel_and_depth() {
        for (n, k, expected) in [(64, 128, 64 * 128 * 2), (33, 3, 64 * 4 * 2), (1000, 5120, 1024 * 5120 * 2)] {
            let packed = PackedBf16::pack(&vec![bf16::ZERO; n * k], n, k);
            assert_eq!(packed.bytes(), expected, "n {n}, k {k}: {} bytes packed, expected {expected}", packed.bytes());
            assert_eq!((packed.n(), packed.k()), (n, k), "n {n}, k {k}: the packed weight reports other sizes");
        }
    }
}
