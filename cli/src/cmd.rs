//! One module per subcommand: its clap arguments and a `run` function.
pub mod certificate;
pub mod completions;
pub mod evidence;
pub mod manifest;
pub mod package_info;
pub mod recover;
pub mod revoke;
pub mod secret;
pub mod sign_quote;
pub mod sim;
pub mod status;
pub mod tcb;
pub mod update;
pub mod verify;
