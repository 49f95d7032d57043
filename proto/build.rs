//! Compiles `kms/v1/*.proto` with protox (pure Rust, no system `protoc`) and writes the
//! descriptor set used by server reflection; compiles `kms/bench/v1/echo.proto` (kms-bench's
//! transport floor) separately, so reflection never advertises it.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "kms/v1/operator.proto",
        "kms/v1/keys.proto",
        "kms/v1/policy.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("kms_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;

    let bench = ["kms/bench/v1/echo.proto"];
    for f in bench {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(protox::compile(bench, ["."])?)?;
    Ok(())
}
