//! Link flags of the `machinery` binary.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Relative relocations packed (DT_RELR, glibc 2.36+, binutils 2.38+; an older `ld` ignores
    // the option with a warning): the dynamic loader then reads a few KB at start-up instead
    // of 1.4 MB of relocation entries, pages that would stay resident in every worker (see
    // BENCHMARKS.md, "Worker memory").
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
