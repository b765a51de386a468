//! `comfy-build`: parse arguments, set up logging, run, map the outcome to an exit code
//! (0 ok, 1 failed, 2 refused input or usage error).

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = builder::cli::Cli::parse();
    support::init_tracing(cli.verbose);
    match builder::run(cli) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", support::term_safe_text(&format!("{e:#}")));
            std::process::ExitCode::from(builder::exit_code(&e))
        }
    }
}
