//! The generated protobuf and gRPC code of `proto/sendlater/v1`, kept in one place.
//! Only `service/`, `connector/`, `cli/` and tests use it; the rest speaks domain types.
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("sendlater.v1");

/// The encoded `FileDescriptorSet`, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sendlater_descriptor");
