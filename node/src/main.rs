//! The `custos` binary: see `custos --help`.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// glibc's allocator spent a tenth of a busy node's CPU in malloc and free (most of it
/// consolidating fragmented bins); mimalloc's thread-local free lists cost a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // No transparent huge pages for this process. mimalloc advises them for its arenas, so every
    // first touch of a 2 MiB range faulted in and zeroed all of it: while tenants were being
    // created that zeroing was a third of a node's sampled CPU, and a node held 15 % more memory
    // per tenant (56–60 KB against 50). A kernel without the flag keeps its default.
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
    let args = cli::Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::dispatch(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
