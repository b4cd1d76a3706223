//! Compiles `proto/sendlater/v1/*.proto` with protox (a pure-Rust protobuf compiler),
//! so a machine with only cargo builds the crate: no system `protoc`.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/sendlater/v1/scheduler.proto",
        "proto/sendlater/v1/dispatch.proto",
        "proto/sendlater/v1/cluster.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // The descriptor set feeds gRPC server reflection (grpcurl without .proto files).
    std::fs::write(out.join("sendlater_descriptor.bin"), fds.encode_to_vec())?;
    // `build_transport(false)`: the Dispatch RPC is named `Connect`, which would clash with the
    // generated `DispatchClient::connect(url)` constructor. Clients build a `Channel` instead.
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
