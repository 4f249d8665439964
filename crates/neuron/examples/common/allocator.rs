//! The allocator of the examples (`#[path]`-included by bench.rs, generate.rs, decode.rs):
//! mimalloc with freed pages kept. See docs/BENCHMARKS.md, "Allocator".

/// mimalloc, not glibc's malloc: a model's activations are tensors of megabytes, allocated
/// and freed once per op; glibc maps each one afresh (above its mmap threshold) and returns it
/// on free, so every op pays page faults on new memory. Measured on the stand-in's vision
/// tower (2 threads): f32 0.63 → 0.41-0.47 s, bf16 0.84 → 0.42-0.44 s. Freed pages are kept
/// ([`keep_freed_pages`]). See docs/BENCHMARKS.md, "Allocator".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` of mimalloc.h (v2 and v3), which libmimalloc-sys does not name.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc returns freed pages to the system after 1 s; loading frees each tensor's read
/// buffer as it packs or transposes it, and faulting fresh pages in again made loading the
/// stand-in take 14.1 s in bf16 and 11.1 s in f32, against 3.7 s and 7.4 s when they are kept
/// (peak memory +0.3 GB).
pub fn keep_freed_pages() {
    // SAFETY: sets an option of the allocator this binary uses, before any thread starts.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
