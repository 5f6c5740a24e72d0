//! `quarry completions SHELL`: shell completion scripts.
use clap_complete::Shell;

use crate::output::{self, Failure};

/// Arguments of `quarry completions`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  quarry completions bash > /etc/bash_completion.d/quarry\n  quarry completions zsh > \"${fpath[1]}/_quarry\""
)]
pub struct Args {
    /// The shell to generate completions for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Writes the completion script for `args.shell` to stdout.
pub fn run(args: &Args, mut command: clap::Command) -> Result<(), Failure> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "quarry", &mut script);
    output::stdout(&script)
}
