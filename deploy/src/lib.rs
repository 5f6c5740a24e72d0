//! Checks of Quarry's Gramine SGX manifest templates (`deploy/gramine/*.manifest.template`):
//! render the template variables the way `gramine-manifest` does for plain `{{ name }}`
//! substitutions, parse the result as TOML, and report every property a production enclave
//! must have that the manifest lacks.
#![forbid(unsafe_code)]

mod check;
mod render;

pub use check::{check, flatten, Expect, Problem};
pub use render::{render, RenderError};
