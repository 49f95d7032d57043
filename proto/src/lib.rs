//! The KMS gRPC API, package `kms.v1`, generated from `proto/kms/v1/*.proto`.

#![allow(clippy::all, missing_docs)]

/// Package `kms.v1`.
pub mod v1 {
    tonic::include_proto!("kms.v1");
}

/// The encoded `FileDescriptorSet` of the API, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kms_descriptor.bin"));
