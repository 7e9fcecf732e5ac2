//! `ctxgate-audit verify FILE`, the binary: exit 0 and a summary for an
//! intact file; exit 1 naming the first broken line for an edited,
//! deleted or swapped one; exit 2 for a file it cannot read.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;
use std::process::Command;

use ctxgate_core::audit::batch;

/// Four chained batches of one chain, one line each, as the collector
/// writes them.
fn chain() -> Vec<String> {
    let mut prev = batch::GENESIS.to_owned();
    (1..=4)
        .map(|seq| {
            let record = format!(
                r#"{{"request_id":"r-{seq}","decisions":[{{"stage":"auth","decision":"allow"}}]}}"#
            );
            let b = batch::encode("c1", seq, &prev, 1_764_500_000_000, 0, 1, record.as_bytes());
            prev = b.hash;
            String::from_utf8(b.bytes).unwrap()
        })
        .collect()
}

fn verify(dir: &Path, lines: &[String]) -> (i32, String) {
    let file = dir.join("audit.jsonl");
    std::fs::write(
        &file,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ctxgate-audit"))
        .arg("verify")
        .arg(&file)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap(), text)
}

#[test]
fn verify_passes_an_intact_file_and_names_the_first_broken_line() {
    let dir = tempfile::tempdir().unwrap();
    let lines = chain();

    let (code, text) = verify(dir.path(), &lines);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.starts_with("ok: 1 chains, 4 batches, 4 records, 4 events, 0 events dropped"),
        "{text}"
    );

    let mut edited = lines.clone();
    edited[2] = edited[2].replace("r-3", "r-X");
    let (code, text) = verify(dir.path(), &edited);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.starts_with("broken: line 3, chain c1, seq 3"),
        "{text}"
    );

    let mut deleted = lines.clone();
    deleted.remove(1);
    let (code, text) = verify(dir.path(), &deleted);
    assert_eq!(code, 1, "{text}");
    assert!(text.starts_with("broken: line 2"), "{text}");

    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    let (code, text) = verify(dir.path(), &swapped);
    assert_eq!(code, 1, "{text}");
    assert!(text.starts_with("broken: line 2"), "{text}");

    let out = Command::new(env!("CARGO_BIN_EXE_ctxgate-audit"))
        .args(["verify", "/nonexistent/audit.jsonl"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
