//! Generates the API types at build time, with no system `protoc`:
//! - gRPC (tonic + prost) for the containerd v1 services, CRI v1 and cgroup metrics, using the
//!   `protoc` binary shipped inside the `protoc-bin-vendored` crate;
//! - ttrpc (rust-protobuf, pure parser) for the `containerd.task.v2.Task` client only: the
//!   shim messages and the events service come from `containerd-shim-protos` (see lib.rs).

use std::path::{Path, PathBuf};
use std::{env, fs};

const API: &str = "protos/github.com/containerd/containerd/api";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=protos");
    let out = PathBuf::from(env::var("OUT_DIR")?);
    grpc()?;
    // Only the `containerd.task.v2.Task` client is generated here; its messages, the shim
    // types and the shim events service are containerd-shim-protos' (lib.rs says why).
    ttrpc_module(
        &out,
        "ttrpc_v2",
        &["protos"],
        &[&format!("{API}/runtime/task/v2/shim.proto")],
    )?;
    Ok(())
}

fn grpc() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: build scripts are single threaded; prost-build reads PROTOC from the environment.
    unsafe { env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    let services = [
        "tasks",
        "containers",
        "namespaces",
        "events",
        "content",
        "images",
        "snapshots",
        "leases",
        "diff",
        "version",
        "introspection",
    ];
    let mut protos: Vec<String> = services
        .iter()
        .flat_map(|s| {
            fs::read_dir(format!("{API}/services/{s}/v1"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().to_string_lossy().into_owned())
        })
        .collect();
    for f in fs::read_dir(format!("{API}/events"))?.flatten() {
        protos.push(f.path().to_string_lossy().into_owned());
    }
    protos.push(format!("{API}/types/runc/options/oci.proto"));
    protos.push("protos/github.com/containerd/cgroups/stats/v1/metrics.proto".into());
    protos.push("protos/github.com/containerd/cgroups/cgroup2/stats/metrics.proto".into());
    protos.push("protos/cri-api/api.proto".into());
    protos.sort();
    // Every message implements `prost::Name` (`full_name()` = containerd's event type URL).
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(
            config,
            &protos,
            &["protos".to_string(), "protos/cri-api".to_string()],
        )?;
    Ok(())
}

/// rust-protobuf + ttrpc codegen into `OUT_DIR/<name>/`, one `.rs` per input file.
fn ttrpc_module(
    out: &Path,
    name: &str,
    includes: &[&str],
    inputs: &[&str],
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = out.join(name);
    fs::create_dir_all(&dir)?;
    ttrpc_codegen::Codegen::new()
        .inputs(inputs)
        .includes(includes)
        .rust_protobuf()
        .rust_protobuf_customize(
            ttrpc_codegen::ProtobufCustomize::default()
                .gen_mod_rs(false)
                .generate_accessors(true),
        )
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .out_dir(&dir)
        .run()?;
    // `include!` cannot take inner attributes or inner doc comments; drop them.
    for entry in fs::read_dir(&dir)?.flatten() {
        let text = fs::read_to_string(entry.path())?;
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#!") && !l.starts_with("//!"))
            .collect();
        fs::write(entry.path(), kept.join("\n"))?;
    }
    Ok(())
}
