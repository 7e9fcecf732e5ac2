//! The tagging stage: trusted routing headers from identity, operation and
//! request rules. Header changes reach the proxy before the request is
//! forwarded (or before a later stage reads the route), so the route table
//! or an Istio VirtualService sees the tags.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `ctxgate_tagging.tagged` | counter | requests tagged |

use super::Step;
use super::request::Request;
use crate::host::Host;
use crate::metrics::{Counter, Metrics};
use crate::tagging::{TagInput, Tagger};

pub struct TaggingStage {
    tagger: Tagger,
    tagged: Counter,
}

impl TaggingStage {
    pub fn new(tagger: Tagger, metrics: &mut Metrics) -> TaggingStage {
        TaggingStage {
            tagger,
            tagged: metrics.counter("ctxgate_tagging.tagged"),
        }
    }

    pub fn on_request(
        &self,
        host: &mut dyn Host,
        request: &mut Request,
        metrics: &mut Metrics,
    ) -> Step {
        let established = request.established(host).clone();
        let declared = request.mcp_declared.clone();
        let input = TagInput {
            head: request.head(),
            identity: established.identity.as_deref(),
            operation: established.operation.as_deref(),
            end_of_stream: request.end_of_stream,
            mcp: declared.as_ref(),
        };
        let tags = self.tagger.tag(&input);
        for name in tags.remove_headers {
            request.remove(name);
        }
        for tag in &tags.values {
            request.set(tag.header, &tag.value);
        }
        metrics.inc(self.tagged);
        Step::Next
    }
}
