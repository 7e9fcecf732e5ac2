//! `make schema`: writes the configuration's JSON Schema to
//! `docs/ctxgate.schema.json` and regenerates the configuration reference
//! in README.md (between its `BEGIN GENERATED` and `END GENERATED` lines),
//! both from the configuration types (see `tests/src/reference.rs`).
//!
//! ```text
//! cargo run -p ctxgate-e2e --bin ctxgate-schema
//! ```

use std::process::ExitCode;

use ctxgate_e2e::reference;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ctxgate-schema: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let root = ctxgate_e2e::repo_root();
    let schema = reference::schema();
    let schema_path = reference::schema_path(&root);
    write(&schema_path, &reference::schema_text(&schema))?;
    let readme_path = root.join("README.md");
    let readme = std::fs::read_to_string(&readme_path)
        .map_err(|e| format!("{}: {e}", readme_path.display()))?;
    let updated = reference::splice(&readme, &reference::reference(&schema))?;
    write(&readme_path, &updated)?;
    println!(
        "wrote {} and the configuration reference in {}",
        schema_path.display(),
        readme_path.display()
    );
    Ok(())
}

/// Writes only when the content changed, so file times stay put otherwise.
fn write(path: &std::path::Path, content: &str) -> Result<(), String> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == content) {
        return Ok(());
    }
    std::fs::write(path, content).map_err(|e| format!("{}: {e}", path.display()))
}
