//! gRPC adapter: `containerd.services.introspection.v1.Introspection`.

use taskd_proto::containerd::services::introspection::v1 as pb;
use taskd_proto::containerd::services::introspection::v1::introspection_server::{
    Introspection, IntrospectionServer,
};
use taskd_proto::google::rpc;
use tonic::{Request, Response, Status};

use super::{Local, Plugin};
use crate::server::status::to_status;

crate::server::grpc_adapter!(IntrospectionService(Local) => IntrospectionServer);

fn plugin_to_proto(p: Plugin) -> pb::Plugin {
    pb::Plugin {
        r#type: p.r#type,
        id: p.id,
        requires: p.requires,
        platforms: Vec::new(),
        exports: p.exports.into_iter().collect(),
        capabilities: p.capabilities,
        init_err: p.init_err.map(|e| rpc::Status {
            code: e.kind.code(),
            message: e.message,
            details: Vec::new(),
        }),
    }
}

#[tonic::async_trait]
impl Introspection for IntrospectionService {
    async fn plugins(
        &self,
        request: Request<pb::PluginsRequest>,
    ) -> Result<Response<pb::PluginsResponse>, Status> {
        let plugins = self
            .local
            .plugins(&request.get_ref().filters)
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::PluginsResponse {
            plugins: plugins.into_iter().map(plugin_to_proto).collect(),
        }))
    }

    async fn server(&self, _request: Request<()>) -> Result<Response<pb::ServerResponse>, Status> {
        let info = self.local.server();
        Ok(Response::new(pb::ServerResponse {
            uuid: info.uuid,
            pid: info.pid,
            pidns: info.pidns,
            deprecations: info
                .deprecations
                .into_iter()
                .map(|w| pb::DeprecationWarning {
                    id: w.id,
                    message: w.message,
                    last_occurrence: Some(w.last_occurrence.into()),
                })
                .collect(),
        }))
    }

    async fn plugin_info(
        &self,
        request: Request<pb::PluginInfoRequest>,
    ) -> Result<Response<pb::PluginInfoResponse>, Status> {
        let req = request.get_ref();
        let plugin = self
            .local
            .plugin(&req.r#type, &req.id)
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::PluginInfoResponse {
            plugin: Some(plugin_to_proto(plugin)),
            extra: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use tonic::Code;

    use super::*;
    use crate::deprecation::{self, Deprecations};
    use crate::errdefs::Kind;
    use crate::plugin::{Instance, PluginError, PluginType, Plugins, Registration, Registry, RegistryConfig};

    fn registrations() -> Vec<Registration> {
        let mut all = crate::events::plugin::registrations();
        all.extend([
            Registration::new(PluginType::Snapshotter, "btrfs", |_cx| async {
                Err(PluginError::Skip("path /x must be a btrfs filesystem".into()))
            }),
            Registration::new(PluginType::Metadata, "broken", |_cx| async {
                Err(PluginError::init(io::Error::other("database is corrupt")))
            })
            .requires(&[PluginType::Event]),
            Registration::new(PluginType::Diff, "off", |_cx| async { Ok(Instance::new()) }),
        ]);
        all.extend(deprecation::plugin::registrations());
        all.extend(crate::services::introspection::plugin::registrations());
        all
    }

    async fn daemon(root: &std::path::Path) -> Plugins {
        Registry::new(registrations())
            .unwrap()
            .init(RegistryConfig {
                root: root.join("root"),
                state: root.join("state"),
                disabled_plugins: vec!["io.containerd.differ.v1.off".into()],
                ..Default::default()
            })
            .await
            .unwrap()
    }

    fn service(plugins: &Plugins) -> IntrospectionService {
        IntrospectionService::new(plugins.get::<Local>().expect("introspection is up"))
    }

    async fn list(svc: &IntrospectionService, filters: &[&str]) -> Result<Vec<pb::Plugin>, Status> {
        let req = Request::new(pb::PluginsRequest {
            filters: filters.iter().map(std::string::ToString::to_string).collect(),
        });
        Ok(svc.plugins(req).await?.into_inner().plugins)
    }

    #[tokio::test]
    async fn plugins_show_status_and_init_errors_like_containerd() {
        let dir = tempfile::tempdir().unwrap();
        let plugins = daemon(dir.path()).await;
        let svc = service(&plugins);
        let all = list(&svc, &[]).await.unwrap();
        let ids: Vec<_> = all.iter().map(|p| p.id.as_str()).collect();
        // disabled plugins are not listed (as in containerd)
        assert!(!ids.contains(&"off"), "{ids:?}");
        for id in ["exchange", "btrfs", "broken", "deprecations", "introspection"] {
            assert!(ids.contains(&id), "{id} missing from {ids:?}");
        }
        let get = |id: &str| all.iter().find(|p| p.id == id).unwrap();

        let exchange = get("exchange");
        assert_eq!(exchange.r#type, "io.containerd.event.v1");
        assert!(exchange.init_err.is_none());
        assert!(
            exchange
                .capabilities
                .iter()
                .any(|c| c.ends_with("events::Publisher")),
            "{:?}",
            exchange.capabilities
        );

        // ctr prints "skip" when the message contains "skip plugin"
        let skipped = get("btrfs").init_err.as_ref().unwrap();
        assert_eq!(skipped.code, Kind::Unknown.code());
        assert!(skipped.message.contains("skip plugin"), "{}", skipped.message);
        assert!(skipped.message.contains("btrfs filesystem"));

        // ctr prints "error", and the message with -d
        let broken = get("broken");
        assert_eq!(broken.requires, vec!["io.containerd.event.v1"]);
        let err = broken.init_err.as_ref().unwrap();
        assert_eq!(err.code, Kind::Unknown.code());
        assert!(err.message.contains("database is corrupt"), "{}", err.message);
        assert!(!err.message.contains("skip plugin"));
    }

    #[tokio::test]
    async fn plugins_filters() {
        let dir = tempfile::tempdir().unwrap();
        let plugins = daemon(dir.path()).await;
        let svc = service(&plugins);
        let ids = |v: Vec<pb::Plugin>| v.into_iter().map(|p| p.id).collect::<Vec<_>>();
        assert_eq!(
            ids(list(&svc, &["type==io.containerd.event.v1"]).await.unwrap()),
            vec!["exchange"]
        );
        assert_eq!(
            ids(list(&svc, &["id==btrfs", "id==broken"]).await.unwrap()),
            vec!["btrfs", "broken"]
        );
        assert_eq!(
            ids(list(&svc, &["capabilities~=Subscriber"]).await.unwrap()),
            vec!["exchange"]
        );
        assert!(list(&svc, &["id==nothing"]).await.unwrap().is_empty());
        let err = list(&svc, &["id==\"open"]).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);

        let one = svc
            .plugin_info(Request::new(pb::PluginInfoRequest {
                r#type: "io.containerd.event.v1".into(),
                id: "exchange".into(),
                options: None,
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(one.plugin.unwrap().id, "exchange");
        let err = svc
            .plugin_info(Request::new(pb::PluginInfoRequest {
                r#type: "io.containerd.event.v1".into(),
                id: "nope".into(),
                options: None,
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }

    #[tokio::test]
    async fn server_uuid_is_persisted_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let plugins = daemon(dir.path()).await;
            let s = service(&plugins)
                .server(Request::new(()))
                .await
                .unwrap()
                .into_inner();
            plugins
                .get::<Deprecations>()
                .unwrap()
                .emit(deprecation::RUNTIME_V1, "old runtime");
            let s2 = service(&plugins)
                .server(Request::new(()))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(s2.deprecations.len(), 1);
            assert_eq!(s2.deprecations[0].id, deprecation::RUNTIME_V1);
            assert_eq!(s2.deprecations[0].message, "old runtime");
            assert!(s2.deprecations[0].last_occurrence.is_some());
            plugins.shutdown(std::time::Duration::from_secs(1)).await;
            s
        };
        uuid::Uuid::parse_str(&first.uuid).unwrap();
        assert_eq!(first.pid, u64::from(std::process::id()));
        assert!(first.pidns > 0);
        assert!(first.deprecations.is_empty());
        let file = dir.path().join("root/io.containerd.grpc.v1.introspection/uuid");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), first.uuid);

        let plugins = daemon(dir.path()).await;
        let again = service(&plugins)
            .server(Request::new(()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.uuid, first.uuid);
    }

    #[tokio::test]
    async fn corrupt_uuid_file_fails_the_plugin_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let plugin_root = dir.path().join("root/io.containerd.grpc.v1.introspection");
        std::fs::create_dir_all(&plugin_root).unwrap();
        std::fs::write(plugin_root.join("uuid"), "not-a-uuid").unwrap();
        let plugins = daemon(dir.path()).await;
        assert!(plugins.get::<Local>().is_none());
        let row = plugins
            .table()
            .snapshot()
            .into_iter()
            .find(|i| i.id.id == "introspection")
            .unwrap();
        match row.status {
            crate::plugin::PluginStatus::Failed(msg) => {
                assert!(msg.contains("uuid"), "{msg}");
                assert!(msg.contains(plugin_root.to_str().unwrap()), "{msg}");
            }
            other => panic!("unexpected status {other:?}"),
        }
    }
}
