//! The machine a benchmark ran on, from `/proc/cpuinfo` (and `lscpu` for the maximum clock
//! when the kernel knows it), and the arithmetic peaks it implies.
//!
//! A ratio measured on one host says little on its own: the bench report gives each side's
//! GEMM rate as a share of these peaks, so a reader sees how close each ran to the machine.
//!
//! The peaks are `cores used × clock × flop per cycle per core`, with these assumptions:
//! - clock: measured ([`Measured`]): a chain of dependent integer adds runs one add per cycle
//!   on every x86 core since the Pentium Pro, so adds per second on each busy core is the clock
//!   those cores actually run at, turbo included. The listed clock is the fallback and is
//!   reported beside it: Intel's model names carry the rated base clock ("@ 2.60GHz");
//!   otherwise `cpu MHz`, which in a virtual machine is whatever the hypervisor reports (on
//!   the AMD guest this workspace is benchmarked on, 2.6 GHz while the cores run at 4.2-4.3:
//!   a peak from it made the report say 141 % of peak). `lscpu`'s "CPU max MHz", when
//!   present, is recorded for the reader but not used;
//! - f32: two FMA units per core as wide as the widest vector extension, an FMA counting 2
//!   flop: 64 flop/cycle with AVX-512 (2 × 16 lanes × 2), 32 with AVX2 + FMA. AMD's Zen 4
//!   (family 25) runs AVX-512 on 256-bit units, so 32 there; some Xeons have one 512-bit
//!   FMA unit only (32), which `/proc/cpuinfo` does not tell;
//! - bf16: AMX (`amx_bf16` and `amx_tile`) at 1024 flop/cycle per core — one `TDPBF16PS`
//!   (16 × 16 outputs, 32 products each: 16 384 flop) every 16 cycles, the figure Intel gives
//!   for 4th-generation Xeon Scalable (Sapphire Rapids) in its 64 and IA-32 Architectures
//!   Optimization Reference Manual (the Intel AMX chapter); otherwise AVX-512 BF16
//!   (`VDPBF16PS`, two bf16 products per f32 lane) at twice the f32 rate, assuming it issues
//!   as often as an FMA; otherwise bf16 is converted and multiplied at the f32 rate.
//!
//! The two vector assumptions are checked, not trusted: [`Measured`] also times a loop of
//! independent `VFMADD231PS zmm` (and `VDPBF16PS zmm` when the CPU has it) on every core used,
//! and the report prints those rates next to the peaks, so a CPU with one FMA unit shows up
//! as a loop at half the peak.
//!
//! Decode is bound by memory, not arithmetic: [`Host::measure_bandwidth`] times the used cores
//! streaming a 2 GiB buffer once (`read_bandwidth`), the bound a decode step's bytes are set
//! against.

use std::fmt::Write as _;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Cores to measure on at once (as `bench --threads`).
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// `cargo xtask host`: the paragraph `bench` puts at the top of its report.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut host = Host::detect()?;
    let cores = args.threads.min(host.logical_cpus.max(1));
    host.measure(cores);
    host.measure_bandwidth(cores);
    print!("{}", host.describe(cores));
    Ok(())
}

/// What the report says about the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    pub model_name: String,
    /// Logical CPUs the kernel lists.
    pub logical_cpus: usize,
    /// The clock the peaks use, in GHz, and where it was read.
    pub ghz: f64,
    pub clock_source: &'static str,
    /// `lscpu`'s "CPU max MHz" in GHz, when the kernel reports one (not in a typical VM).
    pub max_ghz: Option<f64>,
    /// The clock `/proc/cpuinfo` lists (the model name's, else `cpu MHz`), in GHz.
    pub listed_ghz: f64,
    /// What the cores did when measured (see [`Measured`]); `None` until [`Host::measure`].
    pub measured: Option<Measured>,
    /// The memory read bandwidth in GB/s, when measured ([`Host::measure_bandwidth`]).
    pub read_gbs: Option<f64>,
    pub avx512f: bool,
    pub avx512_bf16: bool,
    pub amx_bf16: bool,
    pub amx_tile: bool,
    /// f32 flop per cycle per core (see the module's assumptions).
    pub f32_flop_per_cycle: f64,
    /// bf16 flop per cycle per core and the unit that reaches it.
    pub bf16_flop_per_cycle: f64,
    pub bf16_unit: &'static str,
}

impl Host {
    /// Reads `/proc/cpuinfo` and, when available, `lscpu`'s maximum clock.
    pub fn detect() -> anyhow::Result<Host> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo")
            .map_err(|e| anyhow::anyhow!("reading /proc/cpuinfo (the bench reports the host from it): {e}"))?;
        let lscpu = std::process::Command::new("lscpu")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        Host::parse(&cpuinfo, &lscpu)
    }

    /// The host from the text of `/proc/cpuinfo` and of `lscpu` (empty if not run).
    pub fn parse(cpuinfo: &str, lscpu: &str) -> anyhow::Result<Host> {
        let field = |key: &str| -> Option<&str> {
            cpuinfo.lines().find_map(|line| {
                let (k, v) = line.split_once(':')?;
                (k.trim() == key).then(|| v.trim())
            })
        };
        let model_name = field("model name").unwrap_or("unknown").to_string();
        let logical_cpus = cpuinfo.lines().filter(|l| l.split(':').next().map(str::trim) == Some("processor")).count();
        let flags: Vec<&str> = field("flags").unwrap_or("").split_whitespace().collect();
        let has = |flag: &str| flags.contains(&flag);
        let (ghz, clock_source) = match nominal_ghz(&model_name) {
            Some(ghz) => (ghz, "the rated clock in the model name"),
            None => {
                let mhz: f64 = field("cpu MHz").and_then(|v| v.parse().ok()).ok_or_else(|| {
                    anyhow::anyhow!("/proc/cpuinfo has neither a clock in its model name nor `cpu MHz`")
                })?;
                (mhz / 1000.0, "`cpu MHz` of /proc/cpuinfo")
            }
        };
        let max_ghz = lscpu.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == "CPU max MHz").then(|| v.trim().parse::<f64>().ok()).flatten().map(|mhz| mhz / 1000.0)
        });
        let amd_family = (field("vendor_id") == Some("AuthenticAMD")).then(|| field("cpu family")).flatten();
        let zen4 = amd_family == Some("25");
        let f32_flop_per_cycle = if has("avx512f") && !zen4 {
            64.0
        } else if has("avx512f") || (has("avx2") && has("fma")) {
            32.0
        } else {
            8.0
        };
        let (bf16_flop_per_cycle, bf16_unit) = if has("amx_bf16") && has("amx_tile") {
            (1024.0, "AMX (TDPBF16PS)")
        } else if has("avx512_bf16") {
            (2.0 * f32_flop_per_cycle, "AVX-512 BF16 (VDPBF16PS)")
        } else {
            (f32_flop_per_cycle, "none (converted to f32)")
        };
        Ok(Host {
            model_name,
            logical_cpus,
            ghz,
            listed_ghz: ghz,
            measured: None,
            read_gbs: None,
            clock_source,
            max_ghz,
            avx512f: has("avx512f"),
            avx512_bf16: has("avx512_bf16"),
            amx_bf16: has("amx_bf16"),
            amx_tile: has("amx_tile"),
            f32_flop_per_cycle,
            bf16_flop_per_cycle,
            bf16_unit,
        })
    }

    /// Measures the memory read bandwidth with `cores` threads (see [`read_bandwidth`]).
    pub fn measure_bandwidth(&mut self, cores: usize) {
        self.read_gbs = read_bandwidth(cores);
    }

    /// Measures the clock and the vector loops on `cores` threads at once and takes the
    /// measured clock for the peaks (the listed one stays in [`Host::listed_ghz`]).
    pub fn measure(&mut self, cores: usize) {
        if let Some(measured) = Measured::run(cores, self.avx512f, self.avx512_bf16) {
            self.ghz = measured.ghz;
            self.clock_source = "measured: dependent adds per CPU-second on each busy core";
            self.measured = Some(measured);
        }
    }

    /// The theoretical f32 peak with `cores` cores busy, in GFLOP/s.
    pub fn f32_peak_gflops(&self, cores: usize) -> f64 {
        cores as f64 * self.ghz * self.f32_flop_per_cycle
    }

    /// The theoretical bf16 peak with `cores` cores busy, in GFLOP/s.
    pub fn bf16_peak_gflops(&self, cores: usize) -> f64 {
        cores as f64 * self.ghz * self.bf16_flop_per_cycle
    }

    /// The report's paragraph: the CPU, the extensions that matter, the peaks and how they
    /// were computed.
    pub fn describe(&self, cores: usize) -> String {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let mut s = format!(
            "Host: {} ({} logical CPUs, {} used), {:.2} GHz ({}{}). AVX-512F {}, AVX-512 BF16 {}, AMX-BF16 {}, AMX-TILE {}.\n",
            self.model_name,
            self.logical_cpus,
            cores,
            self.ghz,
            self.clock_source,
            self.max_ghz.map_or(String::new(), |g| format!("; lscpu's maximum: {g:.2} GHz, not used")),
            yes(self.avx512f),
            yes(self.avx512_bf16),
            yes(self.amx_bf16),
            yes(self.amx_tile),
        );
        let _ = writeln!(
            s,
            "Theoretical peaks with {cores} cores: f32 {:.0} GFLOP/s ({cores} × {:.2} GHz × {:.0} flop/cycle: two FMA \
             units of the widest vector width), bf16 {:.0} GFLOP/s ({:.0} flop/cycle through {}; see xtask/src/host.rs \
             for the sources and assumptions).",
            self.f32_peak_gflops(cores),
            self.ghz,
            self.f32_flop_per_cycle,
            self.bf16_peak_gflops(cores),
            self.bf16_flop_per_cycle,
            self.bf16_unit,
        );
        if let Some(m) = &self.measured {
            let share = |rate: f64, peak: f64| format!("{rate:.0} GFLOP/s ({:.0} % of the peak)", 100.0 * rate / peak);
            let _ = write!(
                s,
                "Measured on {} busy cores: {:.2} GHz (listed: {:.2} GHz); a loop of independent `VFMADD231PS` {}",
                m.cores,
                m.ghz,
                self.listed_ghz,
                m.fma_gflops.map_or("not run (no AVX-512)".into(), |g| share(g, self.f32_peak_gflops(m.cores))),
            );
            if let Some(g) = m.dpbf16_gflops {
                let _ = write!(s, ", of `VDPBF16PS` {}", share(g, self.bf16_peak_gflops(m.cores)));
            }
            s.push_str(".\n");
        }
        if let Some(gbs) = self.read_gbs {
            let _ = writeln!(
                s,
                "Memory read bandwidth with {cores} threads: {gbs:.1} GB/s (the best of five passes over 2 GiB)."
            );
        }
        s
    }
}

/// The memory read bandwidth of `threads` threads in GB/s: each streams its share of a 2 GiB
/// buffer once (AVX2 loads summed as 64-bit integers, in assembly so that the debug build of the
/// xtask runs it as fast as a release build would), the best of five passes of wall time from
/// a common start to the last thread's end. `None` without AVX2.
pub fn read_bandwidth(threads: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return None;
        }
        let threads = threads.max(1);
        // 128-byte pieces: the loop reads four 32-byte vectors per iteration.
        let len = (2usize << 30) / 8;
        let buffer = vec![1u64; len];
        let share = (len / threads) / 16 * 16;
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let barrier = std::sync::Barrier::new(threads);
            let started = std::sync::OnceLock::new();
            std::thread::scope(|scope| {
                for t in 0..threads {
                    let (barrier, started, part) = (&barrier, &started, &buffer[t * share..(t + 1) * share]);
                    scope.spawn(move || {
                        barrier.wait();
                        started.get_or_init(std::time::Instant::now);
                        loops::read(part);
                    });
                }
            });
            let seconds = started.get().map_or(f64::INFINITY, |t| t.elapsed().as_secs_f64());
            best = best.min(seconds);
        }
        Some((share * threads * 8) as f64 / best / 1e9)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// The clock and the vector throughput, measured with every used core busy: each figure per
/// second of the threads' own CPU time (the best of several runs of the slowest thread), so
/// other processes on a shared machine do not lower it.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub cores: usize,
    /// Dependent `add` instructions per second per core, in billions: the clock in GHz.
    pub ghz: f64,
    /// All cores' rate of independent `VFMADD231PS zmm` (32 flop each), when AVX-512F.
    pub fma_gflops: Option<f64>,
    /// All cores' rate of independent `VDPBF16PS zmm` (64 flop each), when AVX-512 BF16.
    pub dpbf16_gflops: Option<f64>,
}

impl Measured {
    /// `None` off x86-64 (the loops are x86 assembly).
    #[allow(unused_variables)]
    pub fn run(cores: usize, avx512f: bool, avx512_bf16: bool) -> Option<Measured> {
        #[cfg(target_arch = "x86_64")]
        {
            let cores = cores.max(1);
            let per_core = |seconds: f64, count: f64| count / seconds / 1e9;
            let ghz = per_core(slowest_of(cores, || loops::adds(ADDS)), ADDS as f64 * loops::ADDS_PER_ITER);
            let vector = |ok: bool, run: fn(u64), flop: f64| {
                ok.then(|| cores as f64 * per_core(slowest_of(cores, move || run(VECTOR)), VECTOR as f64 * flop))
            };
            let fma_gflops = vector(avx512f, loops::fma, loops::FMA_FLOP_PER_ITER);
            let dpbf16_gflops = vector(avx512f && avx512_bf16, loops::dpbf16, loops::DPBF16_FLOP_PER_ITER);
            Some(Measured { cores, ghz, fma_gflops, dpbf16_gflops })
        }
        #[cfg(not(target_arch = "x86_64"))]
        None
    }
}

/// Iterations of each loop: about 0.1 s at 4 GHz.
#[cfg(target_arch = "x86_64")]
const ADDS: u64 = 25_000_000;
#[cfg(target_arch = "x86_64")]
const VECTOR: u64 = 20_000_000;

/// Runs `f` on `threads` threads started together, seven times after a warm-up, and returns
/// the best over the runs of the slowest thread's CPU time, in seconds. CPU time, not wall
/// time: on a shared machine another process's threads take turns on the same cores, and a
/// loop that ran half the time would read as a half-speed clock.
#[cfg(target_arch = "x86_64")]
fn slowest_of(threads: usize, f: impl Fn() + Sync) -> f64 {
    let mut best = f64::INFINITY;
    for run in 0..8 {
        let barrier = std::sync::Barrier::new(threads);
        let slowest = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        let start = thread_cpu_seconds();
                        f();
                        thread_cpu_seconds() - start
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("a timing thread panicked")).fold(0.0, f64::max)
        });
        if run > 0 {
            best = best.min(slowest);
        }
    }
    best
}

/// The calling thread's CPU time in seconds (`CLOCK_THREAD_CPUTIME_ID`).
#[cfg(target_arch = "x86_64")]
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec to write to; the clock id is a constant Linux knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// The timed loops, in assembly so that the compiler can neither fold nor reorder them.
#[cfg(target_arch = "x86_64")]
mod loops {
    use std::arch::asm;

    /// 16 dependent adds per iteration: the chain is as long as the loop, so the loop's own
    /// decrement and branch run beside it and the iteration takes 16 cycles.
    pub const ADDS_PER_ITER: f64 = 16.0;
    /// 24 independent FMAs of 16 lanes, 2 flop each, per iteration: more chains than latency ×
    /// units needs on any x86 core, so the loop runs at the issue rate.
    pub const FMA_FLOP_PER_ITER: f64 = 24.0 * 16.0 * 2.0;
    /// 24 independent bf16 dot products of 16 lanes × 2 pairs, 2 flop per pair.
    pub const DPBF16_FLOP_PER_ITER: f64 = 24.0 * 16.0 * 2.0 * 2.0;

    pub fn adds(iters: u64) {
        // SAFETY: registers only; no memory, no stack.
        unsafe {
            asm!(
                "xor {x}, {x}",
                "2:",
                "add {x}, 1", "add {x}, 1", "add {x}, 1", "add {x}, 1",
                "add {x}, 1", "add {x}, 1", "add {x}, 1", "add {x}, 1",
                "add {x}, 1", "add {x}, 1", "add {x}, 1", "add {x}, 1",
                "add {x}, 1", "add {x}, 1", "add {x}, 1", "add {x}, 1",
                "dec {n}",
                "jnz 2b",
                n = inout(reg) iters => _,
                x = out(reg) _,
                options(nostack, nomem),
            );
        }
    }

    macro_rules! vector_loop {
        ($name:ident, $feature:tt, $op:literal) => {
            /// Runs the loop only when the CPU has the instruction (the caller checked the flags;
            /// checked again here because executing it otherwise is undefined).
            pub fn $name(iters: u64) {
                if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!($feature) {
                    // SAFETY: the CPU has the instruction (checked above).
                    unsafe { run(iters) }
                }

                #[target_feature(enable = "avx512f", enable = $feature)]
                unsafe fn run(iters: u64) {
                    // SAFETY: registers only.
                    asm!(
                        "vxorps zmm30, zmm30, zmm30",
                        "vxorps zmm31, zmm31, zmm31",
                        "2:",
                        concat!($op, " zmm0, zmm30, zmm31"), concat!($op, " zmm1, zmm30, zmm31"),
                        concat!($op, " zmm2, zmm30, zmm31"), concat!($op, " zmm3, zmm30, zmm31"),
                        concat!($op, " zmm4, zmm30, zmm31"), concat!($op, " zmm5, zmm30, zmm31"),
                        concat!($op, " zmm6, zmm30, zmm31"), concat!($op, " zmm7, zmm30, zmm31"),
                        concat!($op, " zmm8, zmm30, zmm31"), concat!($op, " zmm9, zmm30, zmm31"),
                        concat!($op, " zmm10, zmm30, zmm31"), concat!($op, " zmm11, zmm30, zmm31"),
                        concat!($op, " zmm12, zmm30, zmm31"), concat!($op, " zmm13, zmm30, zmm31"),
                        concat!($op, " zmm14, zmm30, zmm31"), concat!($op, " zmm15, zmm30, zmm31"),
                        concat!($op, " zmm16, zmm30, zmm31"), concat!($op, " zmm17, zmm30, zmm31"),
                        concat!($op, " zmm18, zmm30, zmm31"), concat!($op, " zmm19, zmm30, zmm31"),
                        concat!($op, " zmm20, zmm30, zmm31"), concat!($op, " zmm21, zmm30, zmm31"),
                        concat!($op, " zmm22, zmm30, zmm31"), concat!($op, " zmm23, zmm30, zmm31"),
                        "dec {n}",
                        "jnz 2b",
                        n = inout(reg) iters => _,
                        out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _,
                        out("zmm5") _, out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _,
                        out("zmm10") _, out("zmm11") _, out("zmm12") _, out("zmm13") _, out("zmm14") _,
                        out("zmm15") _, out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
                        out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
                        out("zmm30") _, out("zmm31") _,
                        options(nostack, nomem),
                    );
                }
            }
        };
    }

    /// Reads every byte of `part` (a multiple of 16 values) once, four 32-byte loads per
    /// iteration into four independent sums.
    pub fn read(part: &[u64]) {
        assert!(part.len().is_multiple_of(16), "read: {} values is not a multiple of 16", part.len());
        if part.is_empty() || !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        // SAFETY: the CPU has AVX2 (checked); the loop reads part.len() · 8 bytes from its start,
        // 128 at a time, and part.len() · 8 is a multiple of 128.
        unsafe { run(part.as_ptr(), part.as_ptr().add(part.len())) }

        #[target_feature(enable = "avx2")]
        unsafe fn run(from: *const u64, to: *const u64) {
            asm!(
                "vpxor ymm0, ymm0, ymm0",
                "vpxor ymm1, ymm1, ymm1",
                "vpxor ymm2, ymm2, ymm2",
                "vpxor ymm3, ymm3, ymm3",
                "2:",
                "vpaddq ymm0, ymm0, [{p}]",
                "vpaddq ymm1, ymm1, [{p} + 32]",
                "vpaddq ymm2, ymm2, [{p} + 64]",
                "vpaddq ymm3, ymm3, [{p} + 96]",
                "add {p}, 128",
                "cmp {p}, {end}",
                "jb 2b",
                p = inout(reg) from => _,
                end = in(reg) to,
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
                options(nostack, readonly),
            );
        }
    }

    vector_loop!(fma, "avx512f", "vfmadd231ps");
    vector_loop!(dpbf16, "avx512bf16", "vdpbf16ps");
}

/// The rated clock in an Intel model name: "… CPU @ 2.60GHz" → 2.6.
fn nominal_ghz(model_name: &str) -> Option<f64> {
    let (_, after) = model_name.rsplit_once('@')?;
    after.trim().strip_suffix("GHz")?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two processors of a Sapphire Rapids guest, as /proc/cpuinfo lists them (flags shortened).
    const SAPPHIRE_RAPIDS: &str = "\
processor	: 0
vendor_id	: GenuineIntel
cpu family	: 6
model		: 143
model name	: Intel(R) Xeon(R) Platinum 8488C CPU @ 2.60GHz
cpu MHz		: 2600.000
flags		: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8

processor	: 1
vendor_id	: GenuineIntel
cpu family	: 6
model		: 143
model name	: Intel(R) Xeon(R) Platinum 8488C CPU @ 2.60GHz
cpu MHz		: 2600.000
flags		: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
";

    /// The AMD guest this workspace was benchmarked on: no clock in the model name, no AMX.
    const EPYC: &str = "\
processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 26
model name	: AMD EPYC
cpu MHz		: 2596.122
flags		: fpu sse sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni

processor	: 1
vendor_id	: AuthenticAMD
cpu family	: 26
model name	: AMD EPYC
cpu MHz		: 2596.122
flags		: fpu sse sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni
";

    fn close(actual: f64, expected: f64, what: &str) {
        assert!((actual - expected).abs() < 1e-6, "{what}: {actual} instead of {expected}");
    }

    #[test]
    fn a_sapphire_rapids_host_takes_the_clock_from_its_model_name_and_counts_amx_for_bf16() {
        let host = Host::parse(SAPPHIRE_RAPIDS, "CPU max MHz:  3800.0000\n").unwrap();
        assert_eq!(host.model_name, "Intel(R) Xeon(R) Platinum 8488C CPU @ 2.60GHz");
        assert_eq!(host.logical_cpus, 2, "processors counted in the canned cpuinfo");
        assert_eq!(host.clock_source, "the rated clock in the model name");
        close(host.ghz, 2.6, "clock (GHz)");
        close(host.max_ghz.unwrap(), 3.8, "lscpu's maximum clock (GHz)");
        assert!(host.avx512f && host.avx512_bf16 && host.amx_bf16 && host.amx_tile, "flags: {host:?}");
        // The figure: 2 cores × 2.6 GHz × 64 flop/cycle = 332.8 GFLOP/s.
        close(host.f32_peak_gflops(2), 332.8, "f32 peak of 2 cores (GFLOP/s)");
        close(host.bf16_peak_gflops(2), 2.0 * 2.6 * 1024.0, "bf16 peak of 2 cores through AMX (GFLOP/s)");
        assert!(host.describe(2).contains("AMX-BF16 yes"), "{}", host.describe(2));
    }

    #[test]
    fn an_epyc_guest_without_a_rated_clock_uses_cpu_mhz_and_avx512_bf16() {
        let host = Host::parse(EPYC, "").unwrap();
        assert_eq!(host.clock_source, "`cpu MHz` of /proc/cpuinfo");
        close(host.ghz, 2.596122, "clock (GHz)");
        assert_eq!(host.max_ghz, None, "no lscpu text, no maximum clock");
        assert!(!host.amx_bf16 && host.avx512_bf16, "flags: {host:?}");
        close(host.f32_peak_gflops(2), 2.0 * 2.596122 * 64.0, "f32 peak of 2 cores (GFLOP/s)");
        close(host.bf16_peak_gflops(2), 2.0 * 2.596122 * 128.0, "bf16 peak through AVX-512 BF16 (GFLOP/s)");
    }

    #[test]
    fn zen_4_runs_avx512_at_half_width() {
        let zen4 = EPYC.replace("cpu family	: 26", "cpu family	: 25");
        let host = Host::parse(&zen4, "").unwrap();
        close(host.f32_flop_per_cycle, 32.0, "f32 flop per cycle on Zen 4");
    }

    #[test]
    fn a_measured_clock_replaces_the_listed_one_in_the_peaks_and_both_are_reported() {
        let mut host = Host::parse(EPYC, "").unwrap();
        host.measured = Some(Measured { cores: 2, ghz: 4.3, fma_gflops: Some(540.0), dpbf16_gflops: Some(1080.0) });
        host.ghz = 4.3;
        close(host.f32_peak_gflops(2), 2.0 * 4.3 * 64.0, "f32 peak from the measured clock");
        host.read_gbs = Some(45.94);
        let text = host.describe(2);
        for expected in [
            "Memory read bandwidth with 2 threads: 45.9 GB/s",
            "4.30 GHz (listed: 2.60 GHz)",
            "`VFMADD231PS` 540 GFLOP/s (98 % of the peak)",
            "`VDPBF16PS` 1080 GFLOP/s (98 % of the peak)",
        ] {
            assert!(text.contains(expected), "the host paragraph lacks {expected:?}:\n{text}");
        }
    }

    /// The loops run on this machine: the clock is a plausible one, and no loop beats the peak
    /// its clock implies by more than timing noise (a wrong flop count per iteration would).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_measured_clock_and_vector_rates_are_plausible_on_this_machine() {
        let mut host = Host::detect().unwrap();
        host.measure(1);
        let m = host.measured.clone().expect("x86-64 measures");
        assert!((0.3..8.0).contains(&m.ghz), "measured clock {:.2} GHz is not a CPU's", m.ghz);
        assert_eq!(host.ghz, m.ghz, "the peaks use the measured clock");
        if let Some(g) = m.fma_gflops {
            let peak = host.f32_peak_gflops(1);
            assert!(g <= 1.15 * peak, "FMA loop {g:.0} GFLOP/s above the peak {peak:.0} of one core");
            assert!(g >= 0.1 * peak, "FMA loop {g:.0} GFLOP/s, under a tenth of the peak {peak:.0}");
        }
        if let Some(g) = m.dpbf16_gflops {
            let peak = host.bf16_peak_gflops(1);
            assert!(g <= 1.15 * peak, "VDPBF16PS loop {g:.0} GFLOP/s above the bf16 peak {peak:.0} of one core");
        }
    }

    #[test]
    fn a_cpuinfo_without_any_clock_is_an_error_that_says_so() {
        let err = Host::parse("processor : 0\nmodel name : Mystery\n", "").unwrap_err().to_string();
        assert!(err.contains("cpu MHz"), "{err}");
    }
}
