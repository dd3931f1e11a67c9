//! `ssecfs`: parse, run. Everything else lives in the library.

/// Every freed heap block is wiped first: copies of the key's headers and of file data that
/// the SDK and hyper make and free never linger in freed memory (see `ssecfs::harden`).
#[global_allocator]
static ALLOC: zeroizing_alloc::ZeroAlloc<std::alloc::System> =
    zeroizing_alloc::ZeroAlloc(std::alloc::System);

fn main() -> std::process::ExitCode {
    // `completions` and `manpages` only print what the command line definitions say
    let args: Vec<_> = std::env::args_os().collect();
    if let Some(code) = ssecfs::cli::generate(&args) {
        return code;
    }
    ssecfs::run::main_entry()
}
