//! Wraps a policy's core Wasm module (built for `wasm32-unknown-unknown` with the guest SDK,
//! which embeds the world's type information) into a component the trainer can load.
//!
//! Usage: `componentize <core.wasm> <out.wasm>`

use anyhow::{Context, Result, bail};
use std::path::PathBuf;

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [input, output] = args.as_slice() else {
        bail!("usage: componentize <core.wasm> <out.wasm>");
    };
    let module = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .with_context(|| format!("{}: no component type information", input.display()))?
        .validate(true)
        .encode()
        .with_context(|| format!("{}: cannot build a component", input.display()))?;
    // The trainer embeds the standard components and is rebuilt when their files change: an
    // unchanged component keeps its file (and its modification time) as it is.
    if std::fs::read(output).is_ok_and(|existing| existing == component) {
        return Ok(());
    }
    std::fs::write(output, component).with_context(|| format!("writing {}", output.display()))?;
    Ok(())
}
