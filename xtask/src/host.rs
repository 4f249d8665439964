//! The machine a benchmark ran on, from `/proc/cpuinfo` (and `lscpu` for the maximum clock
//! when the kernel knows it), and the arithmetic peaks it implies.
//!
//! A ratio measured on one host says little on its own: the bench report gives each side's
//! GEMM rate as a share of these peaks, so a reader sees how close each ran to the machine.
//!
//! The peaks are `cores used × clock × flop per cycle per core`, with these assumptions:
//! - clock: the nominal one. Intel's model names carry the rated base clock ("@ 2.60GHz");
//!   otherwise `cpu MHz`, which in a virtual machine is the constant rate the hypervisor
//!   reports and on bare metal the clock of the first core at the moment it is read. The
//!   maximum (turbo) clock is not in `/proc/cpuinfo`; `lscpu`'s "CPU max MHz", when present,
//!   is recorded for the reader but not used;
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

use std::fmt::Write as _;

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
        s
    }
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
    fn a_cpuinfo_without_any_clock_is_an_error_that_says_so() {
        let err = Host::parse("processor : 0\nmodel name : Mystery\n", "").unwrap_err().to_string();
        assert!(err.contains("cpu MHz"), "{err}");
    }
}
