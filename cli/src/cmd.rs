//! One module per subcommand: its clap arguments and a `run` function.
pub mod certificate;
pub mod completions;
pub mod manifest;
pub mod package_info;
pub mod sim;
pub mod status;
