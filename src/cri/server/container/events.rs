//! `GetContainerEvents`: a server stream of container lifecycle events (see
//! `cri/container_events.rs`), open until the client goes away or taskd stops.

use taskd_proto::cri::v1::{ContainerEventResponse, GetEventsRequest};

use crate::cri::error::CriError;
use crate::cri::server::BoxStream;
use crate::cri::service::CriService;

impl CriService {
    pub async fn get_container_events(
        &self,
        _req: GetEventsRequest,
    ) -> Result<BoxStream<ContainerEventResponse>, CriError> {
        let rx = self.events.subscribe();
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|ev| (Ok(ev), rx)) });
        Ok(Box::pin(stream))
    }
}
