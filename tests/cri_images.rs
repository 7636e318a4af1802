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
use k8s_cri::v1::image_service_client::ImageServiceClient;
use support::registry::Registry;
use tonic::transport::Channel;

/// A kubelet world on its own 10.88.<octet>.0/24 (`slot`: one per test of this file; tests
/// run in parallel) and its CRI image client.
async fn world(slot: u8) -> (CriWorld, ImageServiceClient<Channel>) {
    let w = CriWorld::kubelet(200 + slot * 3 + (std::process::id() % 3) as u8, "", "");
    let (_, images) = w.clients().await;
    (w, images)
}

/// [`world`] with busybox pulled as kubelet sends it (`busybox`) and as `busybox:1.36`, a
/// second tag of the same digest; the image id.
async fn world_with_two_tags(slot: u8) -> (CriWorld, ImageServiceClient<Channel>, String) {
    let (w, mut images) = world(slot).await;
    let id = w.busybox.config.digest.clone();
    assert_eq!(pull(&mut images, "busybox", None).await, id);
    assert_eq!(
        pull(&mut images, "docker.io/library/busybox:1.36", None).await,
        id
    );
    (w, images, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn pull_normalizes_kubelets_reference_through_the_mirror_and_lists_the_image() {
    let (w, mut images) = world(0).await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn a_second_tag_of_the_same_digest_joins_the_same_image() {
    let (_w, mut images, _) = world_with_two_tags(1).await;
    let all = list(&mut images, None).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].repo_tags.len(), 2, "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn list_images_filters_by_reference_and_by_id() {
    let (_w, mut images, id) = world_with_two_tags(2).await;
    // Filter: by reference, by id, and a miss.
    assert_eq!(list(&mut images, Some("busybox:1.36")).await.len(), 1);
    assert_eq!(list(&mut images, Some(&id)).await.len(), 1);
    assert!(list(&mut images, Some("nothing-here")).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn verbose_image_status_carries_the_image_config() {
    let (w, mut images) = world(3).await;
    let id = pull(&mut images, "busybox", None).await;
    assert_eq!(id, w.busybox.config.digest);
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn image_fs_info_reports_the_usage_of_the_snapshotter_the_image_is_unpacked_into() {
    let (w, mut images) = world(4).await;
    assert_eq!(pull(&mut images, "busybox", None).await, w.busybox.config.digest);
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn remove_by_one_tag_removes_every_tag_the_digest_and_the_id_and_again_is_fine() {
    let (_w, mut images, id) = world_with_two_tags(5).await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn pull_from_a_registry_that_requires_auth_needs_the_requests_credentials() {
    let (_w, mut images) = world(6).await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn an_image_pulled_by_ctr_into_k8s_io_is_a_cri_image() {
    let (w, mut images) = world(7).await;
    let ctr_ref = format!("{}/library/busybox:1.36", w.registry.addr);
    w.server
        .ctr_ok(&["-n", "k8s.io", "images", "pull", "--plain-http", &ctr_ref]);
    let found = list(&mut images, Some(&ctr_ref)).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].id, w.busybox.config.digest);
}
