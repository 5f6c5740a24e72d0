//! The TCB monitor's memory, held by the coordinator's state: the last verdicts (for the
//! metric and the report) and when the last run ended. The monitor itself ([`super::monitor`])
//! reads the state; this part does not, so the state can own it without an import circle.
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use quarry_api::tcb::TcbEntry;

/// The monitor's memory: the last verdicts (for the metric) and when the last run ended.
#[derive(Default)]
pub struct Monitor {
    inner: Mutex<Inner>,
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) interval: Option<Duration>,
    pub(super) last_run: Option<u64>,
    /// Last verdict per UUID, from the last run (or the store, for the report).
    pub(super) entries: BTreeMap<String, TcbEntry>,
}

impl Monitor {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marbles out of policy after the last run, as (marble type, status) → count.
    pub fn out_of_policy(&self) -> BTreeMap<(String, String), i64> {
        let mut out = BTreeMap::new();
        for e in self.lock().entries.values().filter(|e| !e.in_policy) {
            let status = e.status.map_or("unknown", |s| s.as_str());
            *out.entry((e.marble_type.clone(), status.to_string()))
                .or_insert(0) += 1;
        }
        out
    }
}
