//! `ssecfs`: parse, run. Everything else lives in the library.

fn main() -> std::process::ExitCode {
    ssecfs::run::main_entry()
}
