use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

trait Store: Send + Sync {
    fn name(&self) -> String;
}
struct S(&'static str);
impl Store for S {
    fn name(&self) -> String {
        self.0.into()
    }
}
trait Monitor: Send + Sync {}

fn ok(ty: PluginType, id: &'static str, requires: &[PluginType]) -> Registration {
    Registration::new(ty, id, move |_cx| async move {
        Ok(Instance::new().with::<dyn Store>(Arc::new(S(id))))
    })
    .requires(requires)
}

fn cfg(dir: &std::path::Path) -> RegistryConfig {
    RegistryConfig {
        root: dir.join("root"),
        state: dir.join("state"),
        ..Default::default()
    }
}

fn status(table: &[PluginInfo], id: &str) -> PluginStatus {
    table
        .iter()
        .find(|i| i.id.id == id)
        .map(|i| i.status.clone())
        .unwrap_or(PluginStatus::Pending)
}

#[tokio::test]
async fn inits_in_dependency_order_whatever_the_registration_order() {
    let dir = tempfile::tempdir().unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mk = |ty, id: &'static str, req: &[PluginType]| {
        let order = order.clone();
        Registration::new(ty, id, move |_cx| {
            order.lock().unwrap().push(id);
            async { Ok(Instance::new()) }
        })
        .requires(req)
    };
    let regs = vec![
        mk(PluginType::Grpc, "tasks", &[PluginType::Service]),
        mk(
            PluginType::Service,
            "tasks-service",
            &[PluginType::Runtime, PluginType::Metadata],
        ),
        mk(
            PluginType::Runtime,
            "task",
            &[PluginType::Metadata, PluginType::Event],
        ),
        mk(PluginType::Metadata, "redb", &[]),
        mk(PluginType::Event, "exchange", &[]),
    ];
    Registry::new(regs).unwrap().init(cfg(dir.path())).await.unwrap();
    assert_eq!(
        *order.lock().unwrap(),
        vec!["redb", "exchange", "task", "tasks-service", "tasks"]
    );
}

#[tokio::test]
async fn typed_get_get_all_get_by_id_and_optional() {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let consumer = Registration::new(PluginType::Grpc, "consumer", move |cx| {
        let seen = seen2.clone();
        async move {
            let first = cx.get::<dyn Store>()?;
            let all: Vec<String> = cx
                .get_all::<dyn Store>()
                .into_iter()
                .map(|(id, s)| format!("{id}={}", s.name()))
                .collect();
            let by_id = cx.get_by_id::<dyn Store>(PluginType::Snapshotter, "b")?;
            let monitor = cx.get_optional::<dyn Monitor>();
            let err = cx
                .get_by_id::<dyn Store>(PluginType::Snapshotter, "nope")
                .err()
                .unwrap();
            seen.lock().unwrap().push(format!(
                "{} {:?} {} {} {err}",
                first.name(),
                all,
                by_id.name(),
                monitor.is_none()
            ));
            Ok(Instance::new())
        }
    })
    .requires(&[PluginType::Snapshotter, PluginType::TaskMonitor]);
    let monitor_skips = Registration::new(PluginType::TaskMonitor, "cgroups", |_cx| async {
        Err(PluginError::Skip("no cgroups here".into()))
    });
    let regs = vec![
        consumer,
        ok(PluginType::Snapshotter, "a", &[]),
        ok(PluginType::Snapshotter, "b", &[]),
        monitor_skips,
    ];
    let plugins = Registry::new(regs).unwrap().init(cfg(dir.path())).await.unwrap();
    let line = seen.lock().unwrap().join("");
    assert_eq!(
        line,
        "a [\"io.containerd.snapshotter.v1.a=a\", \"io.containerd.snapshotter.v1.b=b\"] b true plugin io.containerd.snapshotter.v1.nope is not up"
    );
    let table = plugins.table().snapshot();
    assert_eq!(
        status(&table, "cgroups"),
        PluginStatus::Skipped("no cgroups here".into())
    );
    assert_eq!(status(&table, "consumer"), PluginStatus::Ok);
}

#[tokio::test]
async fn capabilities_only_come_from_required_types() {
    let dir = tempfile::tempdir().unwrap();
    let regs = vec![
        ok(PluginType::Metadata, "redb", &[]),
        Registration::new(PluginType::Grpc, "x", |cx| async move {
            cx.get::<dyn Store>()?;
            Ok(Instance::new())
        })
        .requires(&[PluginType::Event]),
        Registration::new(PluginType::Event, "exchange-without-store", |_cx| async {
            Ok(Instance::new())
        }),
    ];
    let plugins = Registry::new(regs).unwrap().init(cfg(dir.path())).await.unwrap();
    match status(&plugins.table().snapshot(), "x") {
        PluginStatus::Failed(e) => assert!(e.contains("io.containerd.event.v1"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn duplicate_is_an_error_naming_the_plugin() {
    let err = Registry::new(vec![
        ok(PluginType::Metadata, "redb", &[]),
        ok(PluginType::Metadata, "redb", &[]),
    ])
    .err()
    .unwrap();
    assert_eq!(
        err.to_string(),
        "plugin io.containerd.metadata.v1.redb is registered twice"
    );
}

#[test]
fn missing_requirement_is_an_error_naming_plugin_and_type() {
    let err = Registry::new(vec![ok(PluginType::Runtime, "task", &[PluginType::Metadata])])
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "plugin io.containerd.runtime.v2.task requires type io.containerd.metadata.v1, but no plugin of that type is registered"
    );
}

#[test]
fn cycle_is_an_error_naming_the_plugins_on_it() {
    let err = Registry::new(vec![
        ok(PluginType::Metadata, "free", &[]),
        ok(PluginType::Runtime, "task", &[PluginType::Service]),
        ok(PluginType::Service, "tasks", &[PluginType::Grpc]),
        ok(PluginType::Grpc, "tasks", &[PluginType::Runtime]),
    ])
    .err()
    .unwrap();
    let msg = err.to_string();
    assert!(msg.starts_with("plugin requirements form a cycle: "), "{msg}");
    for p in [
        "io.containerd.runtime.v2.task",
        "io.containerd.service.v1.tasks",
        "io.containerd.grpc.v1.tasks",
    ] {
        assert!(msg.contains(p), "{msg}");
    }
    assert!(!msg.contains("free"), "{msg}");
}

#[tokio::test]
async fn failure_disables_dependents_and_skip_is_not_failure() {
    let dir = tempfile::tempdir().unwrap();
    let regs = vec![
        Registration::new(PluginType::Metadata, "redb", |_cx| async {
            Err(PluginError::init(std::io::Error::other("disk on fire")))
        }),
        ok(PluginType::Service, "tasks", &[PluginType::Metadata]),
        Registration::new(PluginType::Grpc, "tasks", |cx| async move {
            cx.get::<dyn Store>()?;
            Ok(Instance::new())
        })
        .requires(&[PluginType::Service]),
    ];
    let plugins = Registry::new(regs).unwrap().init(cfg(dir.path())).await.unwrap();
    let table = plugins.table().snapshot();
    assert_eq!(
        status(&table, "redb"),
        PluginStatus::Failed("disk on fire".into())
    );
    // The service plugin's init does not ask for the store, so it is up; the gRPC plugin asks
    // the service type for a store, which it provides.
    assert_eq!(table.iter().filter(|i| i.status == PluginStatus::Ok).count(), 2);
}

#[tokio::test]
async fn disabled_plugins_are_not_initialized() {
    let dir = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let reg = Registration::new(PluginType::Cri, "cri", move |_cx| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Ok(Instance::new()) }
    });
    let mut config = cfg(dir.path());
    config.disabled_plugins = vec!["io.containerd.cri.v1.cri".into()];
    let plugins = Registry::new(vec![reg]).unwrap().init(config).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(status(&plugins.table().snapshot(), "cri"), PluginStatus::Disabled);
}

#[tokio::test]
async fn required_plugin_that_is_not_up_stops_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registration::new(PluginType::TaskMonitor, "cgroups", |_cx| async {
        Err(PluginError::Skip("cgroup v3".into()))
    });
    let mut config = cfg(dir.path());
    config.required_plugins = vec!["io.containerd.monitor.task.v1.cgroups".into()];
    let err = Registry::new(vec![reg])
        .unwrap()
        .init(config)
        .await
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "required plugin io.containerd.monitor.task.v1.cgroups is not up: skipped: cgroup v3"
    );

    let mut config = cfg(dir.path());
    config.required_plugins = vec!["io.containerd.grpc.v1.nope".into()];
    let err = Registry::new(vec![]).unwrap().init(config).await.err().unwrap();
    assert_eq!(
        err.to_string(),
        "required plugin io.containerd.grpc.v1.nope is not registered"
    );
}

#[derive(serde::Serialize, serde::Deserialize, Default, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct SnapCfg {
    root_path: String,
    sync_remove: bool,
}

#[tokio::test]
async fn per_plugin_directories_and_config_tables() {
    let dir = tempfile::tempdir().unwrap();
    let got = Arc::new(Mutex::new(None));
    let g = got.clone();
    let reg = Registration::new(PluginType::Snapshotter, "overlayfs", move |cx| {
        let g = g.clone();
        async move {
            let c: SnapCfg = cx.config()?;
            *g.lock().unwrap() = Some((cx.root().to_path_buf(), cx.state().to_path_buf(), c));
            Ok(Instance::new())
        }
    })
    .config::<SnapCfg>();
    let mut config = cfg(dir.path());
    let table: toml::Table = toml::from_str("sync_remove = true").unwrap();
    config
        .plugins
        .insert("io.containerd.snapshotter.v1.overlayfs".into(), table);
    Registry::new(vec![reg]).unwrap().init(config).await.unwrap();
    let (root, state, c) = got.lock().unwrap().take().unwrap();
    assert_eq!(
        root,
        dir.path().join("root/io.containerd.snapshotter.v1.overlayfs")
    );
    assert_eq!(
        state,
        dir.path().join("state/io.containerd.snapshotter.v1.overlayfs")
    );
    assert!(root.is_dir() && state.is_dir());
    for d in [&root, &state] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}: closed to other users", d.display());
    }
    assert_eq!(
        c,
        SnapCfg {
            root_path: String::new(),
            sync_remove: true
        }
    );

    // A bad table fails that plugin with an error naming it and the key.
    let reg = Registration::new(PluginType::Snapshotter, "overlayfs", |cx| async move {
        cx.config::<SnapCfg>()?;
        Ok(Instance::new())
    });
    let mut config = cfg(dir.path());
    config.plugins.insert(
        "io.containerd.snapshotter.v1.overlayfs".into(),
        toml::from_str("bogus = 1").unwrap(),
    );
    let plugins = Registry::new(vec![reg]).unwrap().init(config).await.unwrap();
    match status(&plugins.table().snapshot(), "overlayfs") {
        PluginStatus::Failed(e) => assert!(
            e.contains("io.containerd.snapshotter.v1.overlayfs") && e.contains("bogus"),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn shutdown_hooks_run_in_reverse_init_order_with_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mk = |ty, id: &'static str, req: &[PluginType], hang: bool| {
        let order = order.clone();
        Registration::new(ty, id, move |_cx| {
            let order = order.clone();
            async move {
                Ok(Instance::new().on_shutdown(move || async move {
                    if hang {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    order.lock().unwrap().push(id);
                }))
            }
        })
        .requires(req)
    };
    let regs = vec![
        mk(PluginType::Grpc, "last", &[PluginType::Service], false),
        mk(PluginType::Metadata, "first", &[], false),
        mk(PluginType::Service, "middle", &[PluginType::Metadata], true),
    ];
    let plugins = Registry::new(regs).unwrap().init(cfg(dir.path())).await.unwrap();
    let started = std::time::Instant::now();
    plugins.shutdown(Duration::from_millis(100)).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    // "middle" hung past its timeout and never recorded itself.
    assert_eq!(*order.lock().unwrap(), vec!["last", "first"]);
}
