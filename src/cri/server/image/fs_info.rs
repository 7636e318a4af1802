//! `ImageFsInfo`: the snapshotter's file system: mountpoint, used bytes, inodes.

use taskd_proto::cri::v1::{
    FilesystemIdentifier, FilesystemUsage, ImageFsInfoRequest, ImageFsInfoResponse, UInt64Value,
};

use crate::cri::convert::nanos;
use crate::cri::error::CriError;
use crate::cri::service::CriService;

impl CriService {
    pub async fn image_fs_info(&self, _req: ImageFsInfoRequest) -> Result<ImageFsInfoResponse, CriError> {
        let u = self.image_backend("ImageFsInfo")?.fs_info().await?;
        let usage = FilesystemUsage {
            timestamp: nanos(Some(std::time::SystemTime::now())),
            fs_id: Some(FilesystemIdentifier {
                mountpoint: u.mountpoint,
            }),
            used_bytes: Some(UInt64Value { value: u.used_bytes }),
            inodes_used: Some(UInt64Value { value: u.inodes_used }),
        };
        // Images and container layers share the snapshotter's file system.
        Ok(ImageFsInfoResponse {
            image_filesystems: vec![usage.clone()],
            container_filesystems: vec![usage],
        })
    }
}
