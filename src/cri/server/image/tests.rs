//! The image RPCs against a fake backend holding image names like the images service.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use taskd_proto::cri::v1 as cri;

use crate::cri::backend::contract::{Auth, BackendImage, FsUsage, ImageBackend};
use crate::cri::container_events::ContainerEvents;
use crate::cri::error::CriError;
use crate::cri::service::CriService;
use crate::cri::store::image::ImageConfig;
use crate::errdefs::{ErrorKind, Kind};

const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const M: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

#[derive(Default)]
struct FakeBackend {
    names: Mutex<Vec<BackendImage>>,
    auths: Mutex<Vec<Option<Auth>>>,
}

#[async_trait]
impl ImageBackend for FakeBackend {
    async fn pull(&self, reference: &str, auth: Option<Auth>) -> Result<BackendImage, CriError> {
        self.auths.lock().unwrap().push(auth);
        let name = reference.split(':').next().unwrap_or(reference).to_owned();
        let base = name.rsplit_once(':').map(|x| x.0).unwrap_or(&name).to_owned();
        let img = |n: String| BackendImage {
            name: n,
            config_digest: A.into(),
            size: 1234,
            config: ImageConfig {
                user: "1000".into(),
                ..Default::default()
            },
        };
        let mut names = self.names.lock().unwrap();
        for n in [reference.to_owned(), format!("{base}@{M}"), A.to_owned()] {
            if !names.iter().any(|x| x.name == n) {
                names.push(img(n));
            }
        }
        Ok(img(reference.to_owned()))
    }
    async fn list(&self) -> Result<Vec<BackendImage>, CriError> {
        Ok(self.names.lock().unwrap().clone())
    }
    async fn remove(&self, name: &str) -> Result<(), CriError> {
        self.names.lock().unwrap().retain(|n| n.name != name);
        Ok(())
    }
    async fn fs_info(&self) -> Result<FsUsage, CriError> {
        Ok(FsUsage {
            mountpoint: "/var/lib/taskd/io.containerd.snapshotter.v1.overlayfs".into(),
            used_bytes: 42,
            inodes_used: 7,
        })
    }
}

fn spec(s: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: s.into(),
        ..Default::default()
    })
}

#[tokio::test]
async fn pull_list_status_remove_fsinfo() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(FakeBackend::default());
    let mut svc = CriService::new(
        Default::default(),
        &dir.path().join("r"),
        &dir.path().join("s"),
        ContainerEvents::new().unwrap(),
    );
    svc.image_backend = Some(backend.clone());

    let r = svc
        .pull_image(cri::PullImageRequest {
            image: spec("busybox"),
            auth: Some(cri::AuthConfig {
                username: "u".into(),
                password: "p".into(),
                ..Default::default()
            }),
            sandbox_config: None,
        })
        .await
        .unwrap();
    assert_eq!(r.image_ref, A);
    let auth = backend.auths.lock().unwrap()[0].clone().unwrap();
    assert_eq!((auth.username.as_str(), auth.password.as_str()), ("u", "p"));

    let all = svc
        .list_images(cri::ListImagesRequest { filter: None })
        .await
        .unwrap()
        .images;
    assert_eq!(all.len(), 1, "one image per config digest: {all:?}");
    let img = &all[0];
    assert_eq!(img.id, A);
    assert_eq!(img.repo_tags, ["docker.io/library/busybox:latest"]);
    assert_eq!(img.repo_digests, [format!("docker.io/library/busybox@{M}")]);
    assert_eq!(img.uid.as_ref().unwrap().value, 1000);
    assert_eq!(img.size, 1234);

    // Status by short ref, full ref, digest ref and id; verbose info.
    for s in [
        "busybox",
        "docker.io/library/busybox:latest",
        &format!("busybox@{M}"),
        A,
    ] {
        let st = svc
            .image_status(cri::ImageStatusRequest {
                image: spec(s),
                verbose: true,
            })
            .await
            .unwrap();
        assert_eq!(st.image.unwrap().id, A, "{s}");
        assert!(st.info["info"].contains("\"User\":\"1000\""));
    }
    // Absent: no image, no error.
    let st = svc
        .image_status(cri::ImageStatusRequest {
            image: spec("redis"),
            verbose: false,
        })
        .await
        .unwrap();
    assert!(st.image.is_none());
    let e = svc
        .image_status(cri::ImageStatusRequest {
            image: spec("Bad/Ref"),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), Kind::InvalidArgument);

    let filtered = svc
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter { image: spec("redis") }),
        })
        .await
        .unwrap();
    assert!(filtered.images.is_empty());

    let fs = svc.image_fs_info(cri::ImageFsInfoRequest {}).await.unwrap();
    let u = &fs.image_filesystems[0];
    assert!(u.fs_id.as_ref().unwrap().mountpoint.ends_with("overlayfs"));
    assert_eq!(
        (u.used_bytes.unwrap().value, u.inodes_used.unwrap().value),
        (42, 7)
    );

    // Remove by tag removes every name of the digest; again is fine.
    svc.remove_image(cri::RemoveImageRequest {
        image: spec("busybox"),
    })
    .await
    .unwrap();
    assert!(backend.names.lock().unwrap().is_empty());
    svc.remove_image(cri::RemoveImageRequest {
        image: spec("busybox"),
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn without_a_backend_images_are_unimplemented() {
    let dir = tempfile::tempdir().unwrap();
    let svc = crate::cri::service::testing::service(dir.path());
    let e = svc
        .list_images(cri::ListImagesRequest { filter: None })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), Kind::NotImplemented);
    assert!(
        e.to_string()
            .contains("images service with an unpack snapshotter"),
        "{e}"
    );
}
