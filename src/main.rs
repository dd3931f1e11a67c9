//! `ssecfs`: parse, run. Everything else lives in the library.

fn main() -> std::process::ExitCode {
    // `completions` and `manpages` only print what the command line definitions say
    let args: Vec<_> = std::env::args_os().collect();
    if let Some(code) = ssecfs::cli::generate(&args) {
        return code;
    }
    ssecfs::run::main_entry()
}
