//! `switcher`: the daemon and the CLI that talks to it (see `switcher::cli`).

fn main() -> std::process::ExitCode {
    switcher::cli::main()
}
