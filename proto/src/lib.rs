//! The KMS gRPC API, package `kms.v1`, generated from `proto/kms/v1/*.proto`; and package
//! `kms.bench.v1`, the echo service of kms-bench (`proto/kms/bench/v1/echo.proto`).

#![allow(clippy::all, missing_docs)]

/// Package `kms.v1`.
pub mod v1 {
    tonic::include_proto!("kms.v1");
}

/// Package `kms.bench.v1`: the echo service of `kms-bench` (transport floor, not part of the
/// KMS API and not in [`FILE_DESCRIPTOR_SET`]).
pub mod bench {
    pub mod v1 {
        tonic::include_proto!("kms.bench.v1");
    }
}

/// The encoded `FileDescriptorSet` of the API, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kms_descriptor.bin"));
