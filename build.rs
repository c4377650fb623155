//! Compiles `proto/` with protox (pure Rust), so a fresh machine needs no system `protoc`.
use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "leasekeeper/v1/leasekeeper.proto",
        "leasekeeper/v1/raft.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed=proto/{f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("leasekeeper_descriptor.bin"), fds.encode_to_vec())?;
    tonic_build::configure()
        .bytes([".leasekeeper.raft.v1.RaftMessage.data"])
        .compile_fds(fds)?;
    // The slice of etcd's API the bench compares against (client side only).
    println!("cargo:rerun-if-changed=benches/etcd/etcd_subset.proto");
    let etcd = protox::compile(["etcd_subset.proto"], ["benches/etcd"])?;
    tonic_build::configure()
        .build_server(false)
        .compile_fds(etcd)?;
    Ok(())
}
