//! The residency stage: a pinned tenant's request reaches a pool of its
//! region, that region's cross-region cluster, or nothing.
//!
//! The stage names the cluster in `cluster_header`, and the route table
//! routes by it: a filter cannot see the route the proxy will choose
//! after header changes (Envoy re-matches the route only when the router
//! asks for it), so the choice is made here and left to no one else. The
//! cluster that answered is checked against it; a difference (a route
//! table without the `cluster_header` route first) is counted as
//! `misrouted` and logged as an error.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `ctxgate_residency.unpinned` | counter | requests with no region to keep |
//! | `ctxgate_residency.in_region` | counter | pinned requests sent to a pool of their region |
//! | `ctxgate_residency.cross_region` | counter | pinned requests sent to their region's cross-region cluster |
//! | `ctxgate_residency.refused_no_pool` | counter | pinned requests refused: their service has no pool of their region here and the region no cross-region cluster (421) |
//! | `ctxgate_residency.refused_conflict` | counter | requests refused: token claim and tenant table name different regions (403) |
//! | `ctxgate_residency.refused_unmapped` | counter | pinned requests refused: their route's cluster is no pool of `services` (421) |
//! | `ctxgate_residency.misrouted` | counter | pinned requests answered by another cluster than the one chosen (route table error) |

use super::Step;
use super::request::Request;
use crate::host::{Attribute, Host, StreamId};
use crate::metrics::{Counter, Metrics};
use crate::residency::{Destination, Pin, Refusal, Residency};

/// What the stage keeps for one request.
#[derive(Default)]
pub struct ResidencyStream {
    /// The cluster a pinned request was sent to.
    cluster: Option<String>,
}

pub struct ResidencyStage {
    residency: Residency,
    /// Remove a client's `region_header`: no earlier stage owns it (the
    /// tagging stage, when it sets the same header, removed it already).
    strip_region_header: bool,
    unpinned: Counter,
    in_region: Counter,
    cross_region: Counter,
    refused_no_pool: Counter,
    refused_conflict: Counter,
    refused_unmapped: Counter,
    misrouted: Counter,
}

impl ResidencyStage {
    pub fn new(
        residency: Residency,
        tagging_owns_region_header: bool,
        metrics: &mut Metrics,
    ) -> ResidencyStage {
        let mut c = |name: &str| metrics.counter(&format!("ctxgate_residency.{name}"));
        ResidencyStage {
            residency,
            strip_region_header: !tagging_owns_region_header,
            unpinned: c("unpinned"),
            in_region: c("in_region"),
            cross_region: c("cross_region"),
            refused_no_pool: c("refused_no_pool"),
            refused_conflict: c("refused_conflict"),
            refused_unmapped: c("refused_unmapped"),
            misrouted: c("misrouted"),
        }
    }

    pub fn on_request(
        &self,
        host: &mut dyn Host,
        request: &mut Request,
        stream: &mut ResidencyStream,
        metrics: &mut Metrics,
    ) -> Step {
        let config = &self.residency.config;
        request.remove(&config.cluster_header);
        if self.strip_region_header {
            request.remove(&config.region_header);
        }
        let identity = request.established(host).identity.clone();
        let region = match self.residency.pin(identity.as_deref()) {
            Pin::Unpinned => {
                metrics.inc(self.unpinned);
                return Step::Next;
            }
            Pin::Conflict { claim, table } => {
                log::debug!("residency: claim says {claim}, tenant table says {table}");
                metrics.inc(self.refused_conflict);
                let reply = self
                    .residency
                    .refusal(&request.head(), Refusal::Conflict, table);
                return Step::Reply(reply);
            }
            Pin::Region(region) => region.to_owned(),
        };
        // The route the request matched when it arrived: kept if its
        // cluster serves the region.
        let routed = host.attribute(request.stream, Attribute::ClusterName);
        let destination = match self.residency.destination(routed.as_deref(), &region) {
            Ok(destination) => destination,
            Err(refusal) => {
                log::debug!(
                    "residency: {} pinned to {region}, routed to {}: {}",
                    identity.as_deref().map_or("", |c| c.tenant.as_str()),
                    routed.as_deref().unwrap_or("no cluster"),
                    refusal.reason()
                );
                metrics.inc(match refusal {
                    Refusal::NoPool => self.refused_no_pool,
                    Refusal::Unmapped => self.refused_unmapped,
                    Refusal::Conflict => self.refused_conflict,
                });
                return Step::Reply(self.residency.refusal(&request.head(), refusal, &region));
            }
        };
        metrics.inc(match destination {
            Destination::Pool(_) => self.in_region,
            Destination::CrossRegion(_) => self.cross_region,
        });
        let cluster = destination.cluster();
        request.set(&config.region_header, &region);
        request.set(&config.cluster_header, cluster);
        stream.cluster = Some(cluster.to_owned());
        Step::Next
    }

    /// The upstream answered: it must be the cluster chosen.
    pub fn on_response(
        &self,
        host: &mut dyn Host,
        id: StreamId,
        stream: &mut ResidencyStream,
        metrics: &mut Metrics,
    ) {
        let Some(chosen) = stream.cluster.take() else {
            return;
        };
        let answered = host.attribute(id, Attribute::ClusterName);
        if answered.as_deref() != Some(chosen.as_str()) {
            metrics.inc(self.misrouted);
            log::error!(
                "residency: a request sent to {chosen} was answered by {}: the route table \
                 must route by {} before any other route",
                answered.as_deref().unwrap_or("no cluster"),
                self.residency.config.cluster_header
            );
        }
    }
}
