//! Decodes image files to RGB as a loader does and writes each as `<out>/<file name>.<loader>.rgb`
//! (a `width height` line, then the bytes), for `script/check_decode.py` to compare with PIL.
//!
//! `cargo run --release --example decode -- OUT_DIR IMAGE...`

use std::io::Write;
use std::path::PathBuf;

use neuron::preprocess::decode::{load_rgb_with, Loader};

/// mimalloc, not glibc's malloc: a model's activations are tensors of megabytes, allocated
/// and freed once per op; glibc maps each one afresh (above its mmap threshold) and returns it
/// on free, so every op pays page faults on new memory. Measured on the stand-in's vision
/// tower (2 threads): f32 0.63 → 0.41-0.47 s, bf16 0.84 → 0.42-0.44 s. Freed pages are kept
/// ([`keep_freed_pages`]). See README, "Allocator".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` of mimalloc.h (v2 and v3), which libmimalloc-sys does not name.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc returns freed pages to the system after 1 s; loading frees each tensor's read
/// buffer as it packs or transposes it, and faulting fresh pages in again made loading the
/// stand-in take 14.1 s in bf16 and 11.1 s in f32, against 3.7 s and 7.4 s when they are kept
/// (peak memory +0.3 GB).
fn keep_freed_pages() {
    // SAFETY: sets an option of the allocator this binary uses, before any thread starts.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

fn main() -> anyhow::Result<()> {
    keep_freed_pages();
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let out = args.next().ok_or_else(|| anyhow::anyhow!("usage: decode OUT_DIR IMAGE..."))?;
    std::fs::create_dir_all(&out)?;
    for path in args {
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        for loader in [Loader::Processor, Loader::LoadImage] {
            let target = out.join(format!("{name}.{}.rgb", loader.name()));
            match load_rgb_with(&path, loader) {
                Ok(img) => {
                    let mut f = std::fs::File::create(&target)?;
                    writeln!(f, "{} {}", img.width, img.height)?;
                    f.write_all(&img.data)?;
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&target);
                    println!("{name} {}: error: {e:#}", loader.name());
                }
            }
        }
    }
    Ok(())
}
