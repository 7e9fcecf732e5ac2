//! Replays every committed corpus file through its target, without
//! libFuzzer: the corpora are regression tests on stable Rust
//! (`make test-fuzz-corpus`). A failure names the file and the panic.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

fn replay(name: &str) {
    let target = ctxgate_fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, target)| *target)
        .unwrap_or_else(|| panic!("no target {name}"));
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no seeds", dir.display());
    let mut failures = Vec::new();
    for file in &files {
        let data = std::fs::read(file).unwrap();
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| target(&data))) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            let message: String = message.chars().take(600).collect();
            failures.push(format!("{}: {message}", file.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} {name} corpus files fail:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

macro_rules! corpus_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name));
            }
        )*
    };
}

corpus_tests!(
    token_inspect,
    token_verify,
    path,
    query,
    operation,
    config,
    records,
    auth_request,
    mcp_request,
    mcp_listing,
);

#[test]
fn every_target_has_a_corpus_test() {
    let tested = [
        "token_inspect",
        "token_verify",
        "path",
        "query",
        "operation",
        "config",
        "records",
        "auth_request",
        "mcp_request",
        "mcp_listing",
    ];
    for (name, _) in ctxgate_fuzz::TARGETS {
        assert!(tested.contains(name), "{name} has no corpus test");
    }
}
