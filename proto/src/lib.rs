//! The `cordon.v1` wire format: the `Broker` gRPC service and its messages,
//! generated from `proto/cordon/v1/broker.proto`. Never edit the generated code;
//! change the `.proto` and rebuild.

#![forbid(unsafe_code)]

pub mod codec;

/// Generated types and client/server stubs of package `cordon.v1`.
pub mod v1 {
    #![allow(missing_debug_implementations, clippy::all)]
    tonic::include_proto!("cordon.v1");
}

/// Encoded `FileDescriptorSet` for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("cordon_descriptor");
