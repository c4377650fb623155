//! Generated gRPC code for `proto/`.
#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("leasekeeper.v1");
}

/// Client stubs for the part of etcd's API that `leasekeeper bench --etcd` uses.
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}

pub mod raft_v1 {
    tonic::include_proto!("leasekeeper.raft.v1");
}

/// The encoded descriptors of every proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/leasekeeper_descriptor.bin"));
