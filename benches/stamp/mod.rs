//! Which commit a benchmark measured: after criterion has measured and saved
//! a benchmark id, `measured.json` beside its results names the commit
//! (`git rev-parse --short HEAD`, `-dirty` when the tree differs), the
//! command and the date, so that `scripts/bench_chart.py` can say what its
//! table measured.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// Stamps the results of benchmark `id` of `group` if criterion measured
/// and saved them: `ran` says the bench closure was called (the filter let
/// the id through), and this is a benchmark run (not `--test`, `--list` or
/// `--profile-time`).
pub fn record(group: &str, id: &str, ran: bool) {
    if ran && saves_results() {
        write(group, id);
    }
}

/// Whether this process is a criterion benchmark run that saves results.
fn saves_results() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    has("--bench") && !has("--test") && !has("--list") && !args.iter().any(|a| a.starts_with("--profile-time"))
}

/// Where criterion writes (as criterion finds it, without `cargo metadata`).
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("criterion")
}

/// `git` in the crate's directory, trimmed stdout, if it ran.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The commit being measured: short hash, `-dirty` if the measured code
/// (src, benches, examples, Cargo.toml, Cargo.lock) differs from it.
pub fn commit() -> String {
    let Some(hash) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".into();
    };
    match git(&[
        "status",
        "--porcelain",
        "--",
        "src",
        "benches",
        "examples",
        "Cargo.toml",
        "Cargo.lock",
    ]) {
        Some(status) if status.is_empty() => hash,
        _ => format!("{hash}-dirty"),
    }
}

/// Escapes a string for a JSON literal.
fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn write(group: &str, id: &str) {
    // Criterion's directory for an id: its parts, made file-name safe.
    let mut dir = criterion_dir().join(group);
    for part in id.split('/') {
        dir.push(part.replace(['?', '"', '\\', '*', '<', '>', ':', '|', '^'], "_"));
    }
    // The command as a person would type it: the bench binary's own
    // arguments after `--bench` are the filter.
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let command = if filters.is_empty() {
        "cargo bench".to_string()
    } else {
        format!("cargo bench -- {}", filters.join(" "))
    };
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let json = format!(
        "{{\"commit\":{},\"command\":{},\"date\":{}}}\n",
        json_str(&commit()),
        json_str(&command),
        json_str(&date)
    );
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join("measured.json"), json)) {
        eprintln!("could not stamp {}: {e}", dir.display());
    }
}
