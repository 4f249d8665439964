//! Decodes image files to RGB as a loader does and writes each as `<out>/<file name>.<loader>.rgb`
//! (a `width height` line, then the bytes), for `script/check_image_files.py` to compare with PIL.
//!
//! `cargo run --release --example read_images -- OUT_DIR IMAGE...`

use std::io::Write;
use std::path::PathBuf;

use neuron::preprocess::image_file::{load_rgb_with, Loader};

#[path = "common/allocator.rs"]
mod allocator;

fn main() -> anyhow::Result<()> {
    allocator::keep_freed_pages();
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let out = args.next().ok_or_else(|| anyhow::anyhow!("usage: read_images OUT_DIR IMAGE..."))?;
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
