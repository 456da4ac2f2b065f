//! Three build-time jobs for the `trainer` binary:
//! - libtorch without `LD_LIBRARY_PATH`: an rpath to the libtorch that `torch-sys` built
//!   against. Linking `libtorch` without `--as-needed` keeps its CUDA libraries loaded where
//!   the installed torch has them, so the same binary uses a GPU when one is present.
//! - The standard policies built in: `$OUT_DIR/builtin_policies.rs` lists every policy crate
//!   under `policies/` with its component (`build/policies/<name>.wasm`, from `make
//!   policies`) and its `//!` module doc, so `--policy cosine_warmup` works from any folder
//!   and `trainer policies` documents them from the one text their authors keep.
//! - The C++ shim: c10d's TCPStore and Gloo or NCCL process group behind a C API for data
//!   parallelism (`shim/distributed.cpp`), and gradients as views of the optimizer's flat
//!   buffers (`shim/grad_views.cpp`), compiled against the same libtorch. The torch wheel
//!   ships c10d's headers but not Gloo's, which `ProcessGroupGloo.hpp` includes; `make`
//!   unpacks Debian's `libgloo-dev` for them and names the folder in `TRAINER_GLOO_INCLUDE`.
//!   NCCL is compiled in where the torch has CUDA (`libtorch_cuda.so`): its wheels bring the
//!   CUDA runtime's and NCCL's headers, and `make` unpacks the two the compiler also needs
//!   (NVIDIA's `nvidia-cuda-crt` and `nvidia-cuda-cccl` wheels, headers only) into
//!   `TRAINER_CUDA_INCLUDE`. Only declarations are read from all of them: the Gloo and NCCL
//!   code that runs is the one libtorch was built with.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    link_libtorch();
    compile_shim();
    embed_standard_policies();
}

fn compile_shim() {
    const SHIM: [&str; 3] = ["shim/checkpoint.cpp", "shim/distributed.cpp", "shim/optimizer.cpp"];
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
    let mut build = cc::Build::new();
    build
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
        .files(SHIM);
    println!("cargo::rustc-check-cfg=cfg(trainer_nccl)");
    if let Some(includes) = nccl_includes(&lib_dir) {
        build.includes(includes).define("USE_C10D_NCCL", None).define("USE_CUDA", None).define("TRAINER_NCCL", None);
        println!("cargo::rustc-cfg=trainer_nccl");
    }
    build.compile("trainer_shim");
}

/// The header folders NCCL's process group needs, when the torch has CUDA and they are all
/// there; `None` (a build with Gloo alone) otherwise.
fn nccl_includes(lib_dir: &Path) -> Option<Vec<PathBuf>> {
    println!("cargo:rerun-if-env-changed=TRAINER_CUDA_INCLUDE");
    if !lib_dir.join("libtorch_cuda.so").exists() {
        return None;
    }
    let site_packages = lib_dir.parent()?.parent()?;
    let runtime = std::fs::read_dir(site_packages.join("nvidia"))
        .ok()?
        .flatten()
        .map(|entry| entry.path().join("include"))
        .find(|include| include.join("cuda_runtime.h").is_file())?;
    let nccl = site_packages.join("nvidia/nccl/include");
    let toolkit = PathBuf::from(std::env::var_os("TRAINER_CUDA_INCLUDE")?);
    let includes = vec![runtime, nccl.clone(), toolkit.clone(), toolkit.join("cccl")];
    let complete = nccl.join("nccl.h").is_file() && toolkit.join("crt/host_config.h").is_file();
    if !complete {
        println!("cargo:warning=building without NCCL: the CUDA or NCCL headers are missing (run `make setup`)");
        return None;
    }
    Some(includes)
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
