//! `comfyctl`: parse arguments, set up logging, run, map the outcome to an exit code
//! (0 done, 1 failed and rolled back / nothing changed, 2 refused).

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = activator::cli::Cli::parse();
    support::init_tracing(cli.verbose);
    match activator::run(cli) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(activator::exit_code(&e))
        }
    }
}
