//! Generated API types for taskd. Nothing here is written by hand except the module tree.
//!
//! - [`containerd`]: the containerd v1 gRPC services and types (tonic + prost).
//! - [`cri`]: CRI v1 (`runtime.v1`, cri-api v0.36.3).
//! - [`cgroups`]: the cgroup metrics messages shims return from `Stats`.
//! - [`ttrpc`]: the shim side (rust-protobuf + ttrpc): the task v2 client, and the shim
//!   messages and events service of `containerd-shim-protos`.
#![allow(warnings, clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]

pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

pub mod containerd {
    pub mod types {
        tonic::include_proto!("containerd.types");
        pub mod runc {
            pub mod options {
                tonic::include_proto!("containerd.runc.v1");
            }
        }
    }
    pub mod v1 {
        pub mod types {
            tonic::include_proto!("containerd.v1.types");
        }
    }
    pub mod events {
        tonic::include_proto!("containerd.events");
    }
    pub mod services {
        pub mod tasks {
            pub mod v1 {
                tonic::include_proto!("containerd.services.tasks.v1");
            }
        }
        pub mod containers {
            pub mod v1 {
                tonic::include_proto!("containerd.services.containers.v1");
            }
        }
        pub mod namespaces {
            pub mod v1 {
                tonic::include_proto!("containerd.services.namespaces.v1");
            }
        }
        pub mod events {
            pub mod v1 {
                tonic::include_proto!("containerd.services.events.v1");
            }
        }
        pub mod content {
            pub mod v1 {
                tonic::include_proto!("containerd.services.content.v1");
            }
        }
        pub mod images {
            pub mod v1 {
                tonic::include_proto!("containerd.services.images.v1");
            }
        }
        pub mod snapshots {
            pub mod v1 {
                tonic::include_proto!("containerd.services.snapshots.v1");
            }
        }
        pub mod leases {
            pub mod v1 {
                tonic::include_proto!("containerd.services.leases.v1");
            }
        }
        pub mod diff {
            pub mod v1 {
                tonic::include_proto!("containerd.services.diff.v1");
            }
        }
        pub mod version {
            pub mod v1 {
                tonic::include_proto!("containerd.services.version.v1");
            }
        }
        pub mod introspection {
            pub mod v1 {
                tonic::include_proto!("containerd.services.introspection.v1");
            }
        }
    }
}

pub mod cri {
    pub mod v1 {
        tonic::include_proto!("runtime.v1");
    }
}

pub mod cgroups {
    pub mod v1 {
        tonic::include_proto!("io.containerd.cgroups.v1");
    }
    pub mod v2 {
        tonic::include_proto!("io.containerd.cgroups.v2");
    }
}

/// The shim side (rust-protobuf + ttrpc): the messages, the shim types and the shim events
/// service are `containerd-shim-protos`' (the crate our shim is built on: same ttrpc 0.10,
/// protobuf 3.7 and ttrpc-codegen 0.7 as this crate), so the daemon and the shim share one
/// copy. Only the task client is generated here: the crate's `TaskClient` names the service
/// `containerd.task.v3.Task` (containerd 2), while the daemon speaks `containerd.task.v2.Task`,
/// the only one containerd 1.6/1.7's runc shim serves (Debian's containerd-shim-runc-v2
/// 1.6.20); our shim serves both names. The v2 and v3 messages are the same fields under
/// another package name, so on the wire a v3 message is the v2 one.
pub mod ttrpc {
    pub use ::protobuf;
    pub use ::ttrpc as rt;

    /// `containerd.task.v2.Task` (containerd 1.6/1.7 shims, taskd's) and the shim events service.
    pub mod v2 {
        pub use containerd_shim_protos::shim::events_ttrpc_async as events_ttrpc;
        pub use containerd_shim_protos::shim::{event, events, shim};
        pub use containerd_shim_protos::types::{fieldpath, mount, task};
        /// The v2 client, over the crate's messages (`super::shim`). Its generated messages
        /// (`ttrpc_v2/shim.rs`) are not included.
        pub mod shim_ttrpc {
            include!(concat!(env!("OUT_DIR"), "/ttrpc_v2/shim_ttrpc.rs"));
        }
    }
}
