//! The Redis store: one script call ([`SCRIPT`]) per request.

use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, Script};

use super::{Counted, Hit, StorageError};
use crate::report::{Dedupe, ReportId};

/// The script: optional report mark, then every counter of the request.
pub(super) const SCRIPT: &str = include_str!("apply.lua");

pub(super) struct Redis {
    connection: ConnectionManager,
    script: Script,
    timeout: Duration,
    /// How long a chunk of marks outlives its last mark, in seconds.
    horizon: u64,
}

impl Redis {
    /// Connects and loads the script; fails if Redis does not answer within
    /// a few `timeout`s.
    pub async fn open(url: &str, timeout: Duration, dedupe: Dedupe) -> Result<Redis, StorageError> {
        let connect_error = |reason: String| StorageError::Connect {
            url: url.to_owned(),
            reason,
        };
        let client = Client::open(url).map_err(|e| connect_error(e.to_string()))?;
        // No retries inside redis-rs: a failed call fails fast, and the next
        // call triggers a fresh reconnect. Bounded by `timeout`.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(0);
        let script = Script::new(SCRIPT);
        let connect = async {
            let mut connection = ConnectionManager::new_with_config(client, config)
                .await
                .map_err(|e| connect_error(e.to_string()))?;
            script
                .prepare_invoke()
                .load_async(&mut connection)
                .await
                .map_err(|e| connect_error(format!("cannot load the counting script: {e}")))?;
            Ok(connection)
        };
        // Connecting plus loading the script: a few round trips.
        let bound = timeout.saturating_mul(3);
        let connection = tokio::time::timeout(bound, connect)
            .await
            .map_err(|_| connect_error(format!("no answer within {} ms", bound.as_millis())))??;
        Ok(Redis {
            connection,
            script,
            timeout,
            horizon: dedupe.horizon.as_secs().max(1),
        })
    }

    /// Runs the script for one request. redis-rs sends `EVALSHA`; after a
    /// Redis restart (script cache empty) it loads the script and sends it
    /// again, which is safe: Redis refused the first one unrun.
    pub async fn apply(
        &self,
        report: Option<ReportId>,
        hits: &[Hit],
    ) -> Result<Counted, StorageError> {
        let mut invocation = self.script.prepare_invoke();
        match report {
            Some(id) => {
                invocation.key(mark_key(id)).arg(id.bit());
            }
            None => {
                invocation.arg("");
            }
        }
        invocation.arg(self.horizon);
        for hit in hits {
            invocation.key(&hit.key).arg(hit.cost).arg(hit.ttl.max(1));
        }
        let mut connection = self.connection.clone();
        let reply: Vec<i64> =
            tokio::time::timeout(self.timeout, invocation.invoke_async(&mut connection))
                .await
                .map_err(|_| StorageError::Timeout(self.timeout))?
                .map_err(|e| StorageError::Failed(e.to_string()))?;
        let Some((&duplicate, values)) = reply.split_first() else {
            return Err(StorageError::Failed(
                "the counting script returned nothing".into(),
            ));
        };
        if values.len() != hits.len() {
            return Err(StorageError::Failed(format!(
                "the counting script returned {} counters for {}",
                values.len(),
                hits.len()
            )));
        }
        Ok(Counted {
            duplicate: duplicate == 1,
            values: values
                .iter()
                .map(|&v| u64::try_from(v).unwrap_or(0))
                .collect(),
        })
    }
}

/// `ctxgate-rls:report:<reporter>:<chunk>`, a bitmap of [`crate::report::CHUNK_IDS`] bits.
pub(super) fn mark_key(id: ReportId) -> String {
    format!("ctxgate-rls:report:{:016x}:{}", id.reporter, id.chunk())
}
