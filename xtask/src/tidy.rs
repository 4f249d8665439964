//! Tests that keep the documentation true, in rust-analyzer's style: each reads a file of
//! the repository and fails, naming what to fix, when the docs and the code part ways.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};
use contract::{Family, Stage};

use crate::cli::project_root;
use crate::Cli;

fn read(rel: &str) -> String {
    std::fs::read_to_string(project_root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// The first fenced block after `## Layout` in ARCHITECTURE.md, cut into sections: a line that
/// starts at column 0 opens the section of its first word (`crates/neuron/src/`), and the
/// indented lines after it belong to it.
fn layout_sections(architecture: &str) -> BTreeMap<String, String> {
    let after = architecture.split_once("## Layout").expect("ARCHITECTURE.md has a Layout section").1;
    let block = after.split("```").nth(1).expect("the Layout section has a fenced block");
    let mut sections = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in block.lines() {
        if line.is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            let key = line.split_whitespace().next().unwrap().to_string();
            sections.insert(key.clone(), line.to_string());
            current = Some(key);
        } else if let Some(key) = &current {
            let text: &mut String = sections.get_mut(key).unwrap();
            text.push('\n');
            text.push_str(line);
        }
    }
    sections
}

/// Every `.rs` file under `dir` (relative to the project root), sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(project_root().join(dir)) else { return out };
    for entry in entries.flatten() {
        let rel = dir.join(entry.file_name());
        match entry.file_type() {
            Ok(t) if t.is_dir() => out.extend(rust_files(&rel)),
            Ok(_) if rel.extension().is_some_and(|e| e == "rs") => out.push(rel),
            _ => {}
        }
    }
    out.sort();
    out
}

/// The files of `files` the layout does not mention: each must appear, by name (and by its
/// folder below the section's, `text/`), in the section whose path is the longest prefix of it.
fn missing_from_layout(sections: &BTreeMap<String, String>, files: &[PathBuf]) -> Vec<String> {
    let mut missing = Vec::new();
    for file in files {
        let path = file.to_string_lossy().replace('\\', "/");
        let Some((root, text)) =
            sections.iter().filter(|(k, _)| path.starts_with(k.as_str())).max_by_key(|(k, _)| k.len())
        else {
            missing.push(format!("{path}: no section of the layout covers it"));
            continue;
        };
        let rest = &path[root.len()..];
        if rest.is_empty() {
            continue; // the section is the file itself (crates/replay/build.rs)
        }
        let name = rest.rsplit('/').next().unwrap();
        let folders_named = rest.split('/').rev().skip(1).all(|folder| text.contains(&format!("{folder}/")));
        if !text.contains(name) || !folders_named {
            missing.push(format!("{path}: not in the `{root}` section of docs/ARCHITECTURE.md's layout"));
        }
    }
    missing
}

fn source_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for krate in ["contract", "neuron", "parity", "replay"] {
        for dir in ["src", "tests", "examples"] {
            files.extend(rust_files(&Path::new("crates").join(krate).join(dir)));
        }
        let build = Path::new("crates").join(krate).join("build.rs");
        if project_root().join(&build).is_file() {
            files.push(build);
        }
    }
    files.extend(rust_files(Path::new("xtask/src")));
    files
}

#[test]
fn every_source_file_is_in_the_layout() {
    let sections = layout_sections(&read("docs/ARCHITECTURE.md"));
    let files = source_files();
    assert!(files.len() > 50, "found only {} source files: is the walk right?", files.len());
    let missing = missing_from_layout(&sections, &files);
    assert!(missing.is_empty(), "add these to docs/ARCHITECTURE.md's layout:\n{}", missing.join("\n"));
}

#[test]
fn a_file_missing_from_the_layout_is_named() {
    let sections = layout_sections("## Layout\n\n```\ncrates/x/src/   the crate\n  a.rs   one\n  text/   b.rs\n```\n");
    let files: Vec<PathBuf> = [
        "crates/x/src/a.rs",
        "crates/x/src/c.rs",
        "crates/x/src/text/b.rs",
        "crates/x/src/other/b.rs",
        "crates/y/d.rs",
    ]
    .map(PathBuf::from)
    .to_vec();
    assert_eq!(
        missing_from_layout(&sections, &files),
        [
            "crates/x/src/c.rs: not in the `crates/x/src/` section of docs/ARCHITECTURE.md's layout",
            "crates/x/src/other/b.rs: not in the `crates/x/src/` section of docs/ARCHITECTURE.md's layout",
            "crates/y/d.rs: no section of the layout covers it",
        ]
    );
}

#[test]
fn every_xtask_command_is_in_the_layout() {
    let sections = layout_sections(&read("docs/ARCHITECTURE.md"));
    let xtask = &sections["xtask/src/"];
    let missing: Vec<String> = Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .filter(|name| !xtask.contains(&format!("{name}:")))
        .collect();
    assert!(missing.is_empty(), "commands not described in the xtask/src/ section of the layout: {missing:?}");
}

/// Every `cargo xtask …` command line in `text`: inline code or a line of a fenced block, its
/// comment cut off, continued lines joined.
fn xtask_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let joined = text.replace("\\\n", " ");
    for line in joined.lines() {
        let mut rest = line;
        while let Some(at) = rest.find("cargo xtask") {
            let after = &rest[at + "cargo xtask".len()..];
            let end = after.find('`').unwrap_or(after.len());
            let command = after[..end].split(" #").next().unwrap().trim();
            // `cargo xtask` alone names the tool, not a command.
            if !command.is_empty() {
                lines.push(command.to_string());
            }
            rest = &after[end..];
        }
    }
    lines
}

/// A documented command line as arguments: placeholders (`<commit>`) become a value, optional
/// parts (`[--case C]`) are taken, of alternatives (`table|json`) the first.
fn arguments(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut quoted: Option<String> = None;
    for word in line.split_whitespace() {
        if let Some(q) = &mut quoted {
            q.push(' ');
            q.push_str(word);
            if word.ends_with('"') {
                args.push(q.trim_matches('"').to_string());
                quoted = None;
            }
            continue;
        }
        if word.starts_with('"') && !(word.len() > 1 && word.ends_with('"')) {
            quoted = Some(word.to_string());
            continue;
        }
        let word = word.trim_matches(|c| c == '[' || c == ']' || c == '…' || c == ',' || c == '(' || c == ')');
        let word = word.split('|').next().unwrap();
        if word.is_empty() || word == "..." || word == "…" {
            continue;
        }
        args.push(if word.starts_with('<') { "X".to_string() } else { word.trim_matches('"').to_string() });
    }
    args
}

/// The documented lines of `files` that clap refuses, with the reason.
fn unparsed_lines(files: &[(String, String)]) -> Vec<String> {
    let mut bad = Vec::new();
    for (file, text) in files {
        for line in xtask_lines(text) {
            let args = arguments(&line);
            if let Err(e) = Cli::try_parse_from(std::iter::once("cargo xtask".to_string()).chain(args)) {
                let why = e.to_string().lines().next().unwrap_or_default().to_string();
                bad.push(format!("{file}: `cargo xtask {line}`: {why}"));
            }
        }
    }
    bad
}

fn documents() -> Vec<(String, String)> {
    let mut files = vec![("README.md".to_string(), read("README.md"))];
    let mut docs: Vec<PathBuf> =
        std::fs::read_dir(project_root().join("docs")).unwrap().flatten().map(|e| e.path()).collect();
    docs.sort();
    for path in docs.into_iter().filter(|p| p.extension().is_some_and(|e| e == "md")) {
        let rel = path.strip_prefix(project_root()).unwrap().display().to_string();
        files.push((rel, std::fs::read_to_string(&path).unwrap()));
    }
    files
}

#[test]
fn every_xtask_line_of_the_docs_parses() {
    let files = documents();
    let count: usize = files.iter().map(|(_, t)| xtask_lines(t).len()).sum();
    assert!(count >= 10, "found only {count} `cargo xtask` lines in README.md and docs/: is the scan right?");
    let bad = unparsed_lines(&files);
    assert!(bad.is_empty(), "documented commands that no longer parse:\n{}", bad.join("\n"));
}

#[test]
fn a_documented_line_that_no_longer_parses_is_named() {
    let text = "Run `cargo xtask verify --case C` or\n```sh\ncargo xtask verify --cases C   # a typo\n\
                cargo xtask capture [--model M] --revision <commit>\n```\n";
    let bad = unparsed_lines(&[("X.md".into(), text.into())]);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].starts_with("X.md: `cargo xtask verify --cases C`"), "{bad:?}");
}

/// The stems of `PIPELINE` in `script/capture.py`, in order.
fn capture_py_pipeline(script: &str) -> Vec<String> {
    let list = script.split_once("PIPELINE = [").expect("capture.py defines PIPELINE").1;
    let list = list.split_once(']').unwrap().0;
    list.split(',').map(|s| s.trim().trim_matches('"').to_string()).filter(|s| !s.is_empty()).collect()
}

/// The contract's stages as `capture.py` spells its pipeline: `stem.` for an indexed stage,
/// `cache.` once for the cache stages (ordered by layer), the name otherwise.
fn contract_pipeline() -> Vec<String> {
    let mut stems: Vec<String> = Vec::new();
    for stage in Stage::all() {
        let pattern = stage.pattern();
        let stem = match pattern.split_once(".{i}") {
            Some((head, "")) => format!("{head}."),
            Some((head, _)) => format!("{head}."),
            None => pattern,
        };
        if stems.last() != Some(&stem) {
            stems.push(stem);
        }
    }
    stems
}

#[test]
fn capture_py_pipeline_is_the_contracts() {
    let python = capture_py_pipeline(&read("script/capture.py"));
    assert_eq!(
        python,
        contract_pipeline(),
        "script/capture.py's PIPELINE and crates/contract/src/tap.rs's stages disagree (order matters)"
    );
    let script = read("script/capture.py");
    for (list, family) in [("CACHE_KINDS", Family::Cache), ("MOE_KINDS", Family::Moe)] {
        let kinds = script.split_once(&format!("{list} = [")).unwrap().1.split_once(']').unwrap().0;
        let kinds: Vec<String> = kinds.split(',').map(|s| s.trim().trim_matches('"').to_string()).collect();
        let tails: Vec<String> = Stage::all()
            .filter(|s| s.stem().starts_with(family.prefix()))
            .filter_map(|s| s.pattern().split_once(".{i}.").map(|(_, tail)| tail.to_string()))
            .collect();
        assert_eq!(kinds, tails, "capture.py's {list} and the contract's {family:?} stages disagree");
    }
}

/// The first cells of ARCHITECTURE.md's tap table (the rows after the `| tap |` header).
fn tap_table_names(architecture: &str) -> Vec<String> {
    let table = architecture.split_once("| tap | shape | dtype | meaning |").expect("the tap table").1;
    table
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .flat_map(|l| {
            let cell = l.split('|').nth(1).unwrap_or_default();
            cell.split('`').skip(1).step_by(2).map(str::to_string).collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_stage_has_a_row_in_the_tap_table() {
    let names = tap_table_names(&read("docs/ARCHITECTURE.md"));
    let patterns: Vec<String> = Stage::all().map(Stage::pattern).collect();
    let missing: Vec<&String> = patterns.iter().filter(|p| !names.contains(p)).collect();
    let extra: Vec<&String> = names.iter().filter(|n| !patterns.contains(n)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/ARCHITECTURE.md's tap table and the contract disagree: missing rows {missing:?}, rows of no stage {extra:?}"
    );
}
