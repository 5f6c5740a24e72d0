//! One request's consistent snapshot of the state: the phase, the store, the identity and
//! the transparency log as they were when the request started.
use std::sync::Arc;

use super::{Deployment, Identity, Phase};
use crate::http::error::ApiError;
use crate::store::Store;
use crate::translog::TransLog;

/// A consistent view for one request.
pub struct View {
    /// Current phase.
    pub phase: Arc<Phase>,
    /// The store (absent in Recovery).
    pub store: Option<Arc<dyn Store>>,
    /// Root CA and root secret.
    pub identity: Arc<Identity>,
    /// The transparency log.
    pub log: Arc<TransLog>,
}

impl View {
    /// The running deployment and its store, or `wrong-state` saying `what` needs state 3
    /// and which state the coordinator is in.
    pub fn running(&self, what: &str) -> Result<(Arc<Deployment>, Arc<dyn Store>), ApiError> {
        let deployment = match self.phase.as_ref() {
            Phase::Running(d) => d.clone(),
            other => {
                return Err(ApiError::wrong_state(format!(
                    "{what} (state {}): {}",
                    other.state().code(),
                    if matches!(other, Phase::AcceptingManifest) {
                        "no manifest has been set yet"
                    } else {
                        "it is in recovery"
                    }
                )))
            }
        };
        let store = self
            .store
            .clone()
            .ok_or_else(|| ApiError::Internal("no store in state 3".into()))?;
        Ok((deployment, store))
    }
}
