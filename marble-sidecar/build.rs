//! Compiles the SPIFFE Workload API (`proto/workload.proto`) into gRPC server code.
//!
//! protox parses the proto file in Rust (its well-known types, `google/protobuf/struct.proto`
//! included) and hands tonic-prost-build a descriptor set, so no `protoc` is needed: the
//! sidecar builds with the Rust toolchain alone (issue 16).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTO: &str = "proto/workload.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let descriptors = protox::compile([PROTO], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_transport(false)
        // X509SVID carries the private key: its Debug is written by hand (workload.rs) so the
        // key never reaches a log line.
        .skip_debug([".X509SVID"])
        .compile_fds(descriptors)?;
    Ok(())
}
