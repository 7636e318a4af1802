//! The CRI image service end to end: PullImage through registry mirrors from a local
//! `docker-registry` (kubelet's normalised references, tags, digests, auth), ListImages,
//! ImageStatus, RemoveImage and ImageFsInfo, driven only through the independent k8s-cri
//! client over taskd's socket.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

#[path = "support/cri_world.rs"]
mod cri_world;
mod support;

use cri_world::{CriWorld, GREETING, image_spec, list, pull};
use k8s_cri::v1 as cri;
use support::registry::Registry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn image_service_pull_list_status_remove_fsinfo() {
    let w = CriWorld::kubelet(200 + (std::process::id() % 20) as u8, "", "");
    let (_, mut images) = w.clients().await;
    let id = w.busybox.config.digest.clone();
    let manifest = w.busybox.manifest.digest.clone();

    // Normalized as kubelet sends it, pulled through the docker.io mirror.
    assert_eq!(pull(&mut images, "busybox", None).await, id);
    let all = list(&mut images, None).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].id, id);
    assert_eq!(all[0].repo_tags, vec!["docker.io/library/busybox:latest"]);
    assert_eq!(
        all[0].repo_digests,
        vec![format!("docker.io/library/busybox@{manifest}")]
    );
    assert_eq!(all[0].username, "nobody");
    assert!(all[0].size > 0);
    // A second tag of the same digest joins the same image.
    assert_eq!(
        pull(&mut images, "docker.io/library/busybox:1.36", None).await,
        id
    );
    let all = list(&mut images, None).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].repo_tags.len(), 2, "{all:?}");

    // Filter: by reference, by id, and a miss.
    assert_eq!(list(&mut images, Some("busybox:1.36")).await.len(), 1);
    assert_eq!(list(&mut images, Some(&id)).await.len(), 1);
    assert!(list(&mut images, Some("nothing-here")).await.is_empty());

    // Verbose status carries the image config.
    let st = images
        .image_status(cri::ImageStatusRequest {
            image: image_spec("busybox"),
            verbose: true,
        })
        .await
        .expect("ImageStatus")
        .into_inner();
    assert_eq!(st.image.as_ref().unwrap().id, id);
    let info = &st.info["info"];
    assert!(
        info.contains(GREETING) && info.contains("\"WorkingDir\":\"/tmp\"") && info.contains("sleep 3600"),
        "{info}"
    );

    // Usage of the snapshotter the image was unpacked into.
    let fs = images
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .expect("ImageFsInfo")
        .into_inner();
    let u = &fs.image_filesystems[0];
    assert!(
        u.fs_id.as_ref().unwrap().mountpoint.ends_with("overlayfs"),
        "{fs:?}"
    );
    assert!(
        u.used_bytes.unwrap().value > 0 && u.inodes_used.unwrap().value > 0,
        "{fs:?}"
    );

    // Remove by one tag removes every tag, the digest and the id; again is fine.
    for _ in 0..2 {
        images
            .remove_image(cri::RemoveImageRequest {
                image: image_spec("busybox:1.36"),
            })
            .await
            .expect("RemoveImage");
        assert!(list(&mut images, None).await.is_empty());
    }
    let st = images
        .image_status(cri::ImageStatusRequest {
            image: image_spec(&id),
            verbose: false,
        })
        .await
        .expect("ImageStatus of a removed image")
        .into_inner();
    assert!(st.image.is_none());

    // Auth from the request, against a registry that requires it.
    let private = Registry::start_basic_auth();
    private.push_busybox("private/bb", "v1");
    let r = format!("{}/private/bb:v1", private.addr);
    let e = images
        .pull_image(cri::PullImageRequest {
            image: image_spec(&r),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let (user, password) = private.creds.clone().unwrap();
    let auth = cri::AuthConfig {
        username: user,
        password,
        ..Default::default()
    };
    assert!(pull(&mut images, &r, Some(auth)).await.starts_with("sha256:"));
    assert_eq!(list(&mut images, Some(&r)).await.len(), 1);

    // An image pulled client-side by ctr into k8s.io is a CRI image too.
    let ctr_ref = format!("{}/library/busybox:1.36", w.registry.addr);
    w.server
        .ctr_ok(&["-n", "k8s.io", "images", "pull", "--plain-http", &ctr_ref]);
    let found = list(&mut images, Some(&ctr_ref)).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].id, id);
}
