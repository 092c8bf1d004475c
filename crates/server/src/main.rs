//! The `wsgate` binary: parse flags, hand over to the library.

use clap::Parser;

// jemalloc rather than glibc's malloc: an idle connection's allocations
// are a 128-byte-aligned task cell and small objects, which jemalloc packs
// in size classes without per-allocation headers; the handshake's freed
// buffers fragment glibc's heap. 1.55 against 1.70 KiB per idle connection
// in the same run (docs/benchmarks.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = wsgate::cli::Cli::parse();
    match wsgate::cli::main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
