//! Controlled hand-over: the persistent `<group>/handover` node holding a [`HandoverRequest`]
//! (`mq-fabric master yield`). See the request type for who acts on it.

use crate::error::RegistryError;
use crate::layout::HandoverRequest;
use crate::session::{encode, Registry};

impl Registry {
    /// Stores `request` as the group's pending hand-over, replacing any older one.
    pub async fn request_handover(
        &self,
        group: &str,
        request: &HandoverRequest,
    ) -> Result<(), RegistryError> {
        let path = self.group_paths(group)?.handover();
        let data = encode(&path, request)?;
        self.put_persistent(&path, &data).await?;
        tracing::info!(%group, from = %request.from, to = ?request.to, "hand-over requested");
        Ok(())
    }

    /// The group's pending hand-over, if any.
    pub async fn handover(&self, group: &str) -> Result<Option<HandoverRequest>, RegistryError> {
        let path = self.group_paths(group)?.handover();
        Ok(self.get_json(&path).await?.map(|(r, _)| r))
    }

    /// Removes the pending hand-over if it is the one with `id` (a newer request stays). `Ok` if
    /// there is none.
    pub async fn clear_handover(&self, group: &str, id: &str) -> Result<(), RegistryError> {
        let path = self.group_paths(group)?.handover();
        let Some((req, stat)) = self.get_json::<HandoverRequest>(&path).await? else {
            return Ok(());
        };
        if req.id != id {
            return Ok(());
        }
        match self.delete(&path, Some(stat.version)).await {
            Ok(()) | Err(RegistryError::NoNode { .. }) | Err(RegistryError::BadVersion { .. }) => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
