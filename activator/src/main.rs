//! `comfyctl`: parse arguments, set up logging, run, map the outcome to an exit code
//! (0 done, 1 failed and rolled back / nothing changed, 2 refused).

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = activator::cli::Cli::parse();
    support::init_tracing(cli.verbose);
    let json = cli.json;
    match activator::run(cli) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            let code = activator::exit_code(&e);
            eprintln!("error: {}", support::term_safe_text(&format!("{e:#}")));
            if json {
                // Scripts (the Ansible role) read the reason from stdout, as they read success.
                let v = activator::versioned_error(&e, code);
                println!("{v}");
            }
            std::process::ExitCode::from(code)
        }
    }
}
