//! Compiles the etcd v3 API subset (`proto/etcd_v3.proto`) into gRPC client code.
//!
//! protox parses the proto file in Rust and hands tonic-prost-build a descriptor set, so no
//! `protoc` is needed: the coordinator builds with the Rust toolchain alone (issue 16).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTO: &str = "proto/etcd_v3.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let descriptors = protox::compile([PROTO], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
