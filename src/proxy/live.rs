//! What a config reload replaces in the proxy: the decision pipeline (router, routes, head
//! limits), its per-route metric handles, and whether requests are access-logged. Read once
//! per request (`Gateway::new_ctx`), so one request sees one table from start to end.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::Pipeline;
use crate::metrics::ByStatusClass;

pub struct Live {
    pub pipeline: Pipeline,
    /// Index = route index in `pipeline.routes`; the last is "no route matched".
    pub route_requests: Vec<ByStatusClass>,
    pub access_log: bool,
}

/// The running [`Live`], swapped whole by a reload.
pub type SharedLive = Arc<ArcSwap<Live>>;
