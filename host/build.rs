//! Three build-time jobs for the `trainer` binary:
//! - libtorch without `LD_LIBRARY_PATH`: an rpath to the libtorch that `torch-sys` built
//!   against. Linking `libtorch` without `--as-needed` keeps its CUDA libraries loaded where
//!   the installed torch has them, so the same binary uses a GPU when one is present.
//! - The standard policies built in: `$OUT_DIR/builtin_policies.rs` lists every policy crate
//!   under `policies/` with its component (`build/policies/<name>.wasm`, from `make
//!   policies`) and its `//!` module doc, so `--policy cosine_warmup` works from any folder
//!   and `trainer policies` documents them from the one text their authors keep.
//! - The C++ shim: c10d's TCPStore and Gloo process group behind a C API for data
//!   parallelism (`shim/distributed.cpp`), and gradients as views of the optimizer's flat
//!   buffers (`shim/grad_views.cpp`), compiled against the same libtorch. The torch wheel ships c10d's headers
//!   but not Gloo's, which `ProcessGroupGloo.hpp` includes; `make` unpacks Debian's
//!   `libgloo-dev` for them and names the folder in `TRAINER_GLOO_INCLUDE`. Only declarations
//!   are read from them: the Gloo code that runs is the one inside libtorch.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    link_libtorch();
    compile_shim();
    embed_standard_policies();
}

fn compile_shim() {
    const SHIM: [&str; 2] = ["shim/distributed.cpp", "shim/grad_views.cpp"];
    for file in SHIM {
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo:rerun-if-env-changed=TRAINER_GLOO_INCLUDE");
    let lib_dir = PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys names its libtorch"));
    let torch_include = lib_dir.parent().expect("libtorch's lib/ has a parent").join("include");
    let gloo_include = std::env::var_os("TRAINER_GLOO_INCLUDE").map(PathBuf::from);
    let Some(gloo_include) = gloo_include.filter(|dir| dir.join("gloo/algorithm.h").is_file()) else {
        panic!(
            "TRAINER_GLOO_INCLUDE must name a folder with Gloo's headers (gloo/algorithm.h); \
             `make setup` unpacks them and writes the setting into .cargo/config.toml"
        );
    };
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .std("c++17")
        .include(&torch_include)
        .include(torch_include.join("torch/csrc/api/include"))
        .include(&gloo_include)
        // The ABI every torch wheel of the pinned version is built with.
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_C10D_GLOO", None)
        // torch's headers warn under -Wall; the shim's own code is small enough to read.
        .warnings(false)
        .files(SHIM)
        .compile("trainer_shim");
}

fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{lib_dir}");
        println!("cargo:rustc-link-arg=-ltorch");
        if Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-ltorch_cuda");
        }
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

fn embed_standard_policies() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.parent().expect("host/ sits in the workspace");
    let policies_dir = workspace.join("policies");
    // A new policy crate joins the workspace's members: that edit, not a `touch build.rs`,
    // brings it in. (Watching `policies/` itself would rebuild the trainer for any edit to
    // the tools and the other languages' sources there.)
    println!("cargo:rerun-if-changed={}", workspace.join("Cargo.toml").display());

    let mut table = String::from("&[\n");
    for (name, lib_rs) in standard_policies(&policies_dir) {
        let source = std::fs::read_to_string(&lib_rs).unwrap_or_else(|err| panic!("{}: {err}", lib_rs.display()));
        let wasm = workspace.join("build/policies").join(format!("{name}.wasm"));
        // A missing file makes cargo rerun this script on every build, so the component is
        // picked up as soon as `make policies` writes it; an existing one, when it changes.
        println!("cargo:rerun-if-changed={}", lib_rs.display());
        println!("cargo:rerun-if-changed={}", wasm.display());
        let component = if wasm.is_file() {
            format!("Some(include_bytes!({:?}))", wasm.to_str().expect("the workspace path is UTF-8"))
        } else {
            "None".to_string()
        };
        writeln!(
            table,
            "    BuiltinPolicy {{ name: {name:?}, component: {component}, doc: {:?} }},",
            module_doc(&source)
        )
        .expect("writing to a String cannot fail");
    }
    table.push_str("]\n");

    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let out = out_dir.join("builtin_policies.rs");
    std::fs::write(&out, table).unwrap_or_else(|err| panic!("{}: {err}", out.display()));
}

/// `(name, lib.rs)` of each policy crate under `policies/`, by name. A policy crate is a
/// library on the guest SDK; `componentize` (a tool) and the folders of policies in other
/// languages (no `src/lib.rs`) are not.
fn standard_policies(policies_dir: &Path) -> Vec<(String, PathBuf)> {
    let entries = std::fs::read_dir(policies_dir).unwrap_or_else(|err| panic!("{}: {err}", policies_dir.display()));
    let mut policies: Vec<(String, PathBuf)> = entries
        .map(|entry| entry.unwrap_or_else(|err| panic!("{}: {err}", policies_dir.display())).path())
        .filter(|dir| dir.join("src/lib.rs").is_file())
        .filter(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml"))
                .is_ok_and(|manifest| manifest.contains("trainer-policy-sdk"))
        })
        .map(|dir| {
            let name = dir.file_name().expect("a folder has a name").to_string_lossy().into_owned();
            (name, dir.join("src/lib.rs"))
        })
        .collect();
    policies.sort();
    policies
}

/// The `//!` lines at the top of a source file, without their markers.
fn module_doc(source: &str) -> String {
    source
        .lines()
        .map_while(|line| line.strip_prefix("//!"))
        .map(|line| line.strip_prefix(' ').unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}
