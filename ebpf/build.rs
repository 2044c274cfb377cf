//! Compiles the eBPF programs in `src/bpf/` with clang (Debian: clang, llvm, libbpf-dev; the
//! project's `scripts/setup.sh` installs them). The objects are embedded in the crate.

use std::path::PathBuf;
use std::process::Command;

const PROGRAMS: &[&str] = &["redirect"];
const PACKAGES: &str =
    "clang, llvm and libbpf-dev (run scripts/setup.sh, or: apt-get install clang llvm libbpf-dev)";

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let clang = std::env::var("KEELSON_CLANG").unwrap_or_else(|_| "clang".into());
    if !std::path::Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        panic!("building the eBPF programs needs libbpf's headers (/usr/include/bpf/bpf_helpers.h): install {PACKAGES}");
    }
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    // The multiarch include directory holds <asm/types.h>, which <linux/bpf.h> needs.
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    for name in PROGRAMS {
        let src = format!("src/bpf/{name}.bpf.c");
        println!("cargo:rerun-if-changed={src}");
        let obj = out.join(format!("{name}.bpf.o"));
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-I{multiarch}"))
            .args(["-c", &src, "-o"])
            .arg(&obj)
            .status()
            .unwrap_or_else(|e| panic!("running {clang} to build {src}: {e}; install {PACKAGES}"));
        if !status.success() {
            panic!("{clang} failed to compile {src} ({status})");
        }
    }
    println!("cargo:rerun-if-env-changed=KEELSON_CLANG");
    println!("cargo:rerun-if-changed=build.rs");
}
