//! Link step of the `armwatch` binary only (dependencies are unchanged).
//!
//! On glibc Linux, relative relocations are packed (`-z pack-relative-relocs`, DT_RELR: glibc
//! 2.36+, binutils 2.38+, lld 15+): the binary's 2.5 MB `.rela.dyn` becomes a 37 KB `.relr.dyn`,
//! and the pages the loader read to apply it are no longer part of every process's resident
//! set (an idle `armwatch` 12.5 -> 10.3 MB). `ARMWATCH_NO_RELR=1` builds without it (for a
//! toolchain or a target glibc older than that).

fn main() {
    println!("cargo:rerun-if-env-changed=ARMWATCH_NO_RELR");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" && std::env::var_os("ARMWATCH_NO_RELR").is_none() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
