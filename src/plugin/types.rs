//! Every plugin type and every built-in plugin id, in one place.

use std::fmt;

/// A plugin type; `Display` gives containerd's URI for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PluginType {
    /// Internal plugins with no other home (the metrics registry, the events exchange's users).
    Internal,
    /// The events exchange.
    Event,
    /// Metadata store (redb).
    Metadata,
    /// Content store.
    Content,
    /// Snapshotters.
    Snapshotter,
    /// Diff appliers/comparers.
    Diff,
    /// Lease managers.
    Lease,
    /// Runtimes (the v2 shim task manager).
    Runtime,
    /// Task monitors.
    TaskMonitor,
    /// In-process service implementations (`Local`).
    Service,
    /// gRPC transport adapters.
    Grpc,
    /// ttrpc services (the events service shims publish to).
    Ttrpc,
    /// The CRI adapter.
    Cri,
}

impl PluginType {
    pub const ALL: [PluginType; 13] = [
        PluginType::Internal,
        PluginType::Event,
        PluginType::Metadata,
        PluginType::Content,
        PluginType::Snapshotter,
        PluginType::Diff,
        PluginType::Lease,
        PluginType::Runtime,
        PluginType::TaskMonitor,
        PluginType::Service,
        PluginType::Grpc,
        PluginType::Ttrpc,
        PluginType::Cri,
    ];

    pub const fn uri(self) -> &'static str {
        match self {
            PluginType::Internal => "io.containerd.internal.v1",
            PluginType::Event => "io.containerd.event.v1",
            PluginType::Metadata => "io.containerd.metadata.v1",
            PluginType::Content => "io.containerd.content.v1",
            PluginType::Snapshotter => "io.containerd.snapshotter.v1",
            PluginType::Diff => "io.containerd.differ.v1",
            PluginType::Lease => "io.containerd.lease.v1",
            PluginType::Runtime => "io.containerd.runtime.v2",
            PluginType::TaskMonitor => "io.containerd.monitor.task.v1",
            PluginType::Service => "io.containerd.service.v1",
            PluginType::Grpc => "io.containerd.grpc.v1",
            PluginType::Ttrpc => "io.containerd.ttrpc.v1",
            PluginType::Cri => "io.containerd.cri.v1",
        }
    }

    /// Parses a URI as written in configs (`disabled_plugins`, `[plugins."<uri>.<id>"]`).
    pub fn from_uri(uri: &str) -> Option<PluginType> {
        PluginType::ALL.into_iter().find(|t| t.uri() == uri)
    }
}

impl fmt::Display for PluginType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.uri())
    }
}

/// A plugin's full name: `<type uri>.<id>`, as containerd prints it and configs name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PluginId {
    pub r#type: PluginType,
    pub id: &'static str,
}

impl fmt::Display for PluginId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.r#type, self.id)
    }
}

/// The ids of the built-in plugins.
pub mod ids {
    pub const EXCHANGE: &str = "exchange";
    pub const METADATA: &str = "redb";
    pub const CONTENT: &str = "content";
    pub const CONTENT_SERVICE: &str = "content-service";
    pub const IMAGES: &str = "images";
    pub const IMAGES_SERVICE: &str = "images-service";
    pub const GC: &str = "gc";
    pub const OVERLAYFS: &str = "overlayfs";
    pub const NATIVE: &str = "native";
    pub const TASK: &str = "task";
    pub const CGROUPS: &str = "cgroups";
    pub const METRICS: &str = "metrics";
    pub const TASKS: &str = "tasks";
    pub const CONTAINERS: &str = "containers";
    pub const NAMESPACES: &str = "namespaces";
    pub const LEASES: &str = "leases";
    pub const SNAPSHOTS: &str = "snapshots";
    pub const DIFF: &str = "diff";
    pub const WALKING: &str = "walking";
    pub const EVENTS: &str = "events";
    pub const VERSION: &str = "version";
    pub const INTROSPECTION: &str = "introspection";
    pub const HEALTH: &str = "healthcheck";
    pub const DEPRECATIONS: &str = "deprecations";
    pub const CRI: &str = "cri";
}
