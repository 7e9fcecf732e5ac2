//! Data residency: where a pinned tenant's request may go.
//!
//! A tenant is pinned to a region by the operator (`tenants`) or by a
//! token claim (`claim`); when both name one, they must agree. The
//! gateway knows its services and the pools (clusters) each has per
//! region. A pinned request is sent to a pool of its region of the service
//! its route chose, named in a trusted
//! header the route table routes by (`cluster_header`), so the router has
//! no choice left to make; without such a pool, to the region's
//! cross-region cluster if one is configured; otherwise it is refused. It
//! never silently lands elsewhere, and the cluster that answered is
//! checked against the one chosen.

pub mod config;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use serde_json::json;

use crate::contract::Caller;
use crate::http::RequestHead;
use crate::reply::LocalReply;
use config::ResidencyConfig;

/// The status of a refusal because no pool of the tenant's region is
/// reachable from this gateway: 421 Misdirected Request, "this server is
/// not able to produce a response" for this request (RFC 9110 §15.5.20).
pub const NO_POOL_STATUS: u16 = 421;

/// Where a caller's data must stay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin<'a> {
    /// No region applies: the request is routed as usual.
    Unpinned,
    Region(&'a str),
    /// The token's claim and the tenant table name different regions.
    Conflict {
        claim: &'a str,
        table: &'a str,
    },
}

/// Why a pinned request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The service has no pool of the region here, and the region has no
    /// cross-region cluster.
    NoPool,
    /// The route's cluster is no pool of `services` (or the route has no
    /// cluster): where it is, is not known.
    Unmapped,
    /// Claim and tenant table disagree.
    Conflict,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::NoPool => "no_pool_in_region",
            Refusal::Unmapped => "unmapped_cluster",
            Refusal::Conflict => "region_conflict",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Refusal::NoPool | Refusal::Unmapped => NO_POOL_STATUS,
            Refusal::Conflict => 403,
        }
    }
}

/// The cluster a pinned request is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination<'a> {
    /// A pool of the tenant's region, reached from this gateway.
    Pool(&'a str),
    /// The cluster forwarding to the tenant's region.
    CrossRegion(&'a str),
}

impl<'a> Destination<'a> {
    pub fn cluster(self) -> &'a str {
        match self {
            Destination::Pool(c) | Destination::CrossRegion(c) => c,
        }
    }
}

pub struct Residency {
    pub config: ResidencyConfig,
    /// Every pool: cluster -> (service, region).
    pools: HashMap<String, (String, String)>,
}

impl Residency {
    pub fn new(config: ResidencyConfig) -> Result<Residency, crate::config::ConfigError> {
        config.validate()?;
        let pools = config
            .services
            .iter()
            .flat_map(|(service, regions)| {
                regions.iter().flat_map(move |(region, clusters)| {
                    clusters
                        .iter()
                        .map(move |c| (c.clone(), (service.clone(), region.clone())))
                })
            })
            .collect();
        Ok(Residency { config, pools })
    }

    /// The caller's region, if it is pinned to one.
    pub fn pin<'a>(&'a self, caller: Option<&'a Caller>) -> Pin<'a> {
        let Some(caller) = caller else {
            return Pin::Unpinned;
        };
        let table = self.config.tenants.get(&caller.tenant).map(String::as_str);
        let claim = self
            .config
            .claim
            .as_ref()
            .and_then(|name| caller.claims.get(name))
            .map(String::as_str)
            .filter(|region| !region.is_empty());
        match (claim, table) {
            (Some(claim), Some(table)) if claim != table => Pin::Conflict { claim, table },
            (Some(region), _) | (None, Some(region)) => Pin::Region(region),
            (None, None) => Pin::Unpinned,
        }
    }

    /// Where a request pinned to `region` goes, given the cluster its
    /// route chose: that cluster if it is a pool of the region; else the
    /// same service's first pool in the region; else the region's
    /// cross-region cluster.
    pub fn destination(
        &self,
        routed: Option<&str>,
        region: &str,
    ) -> Result<Destination<'_>, Refusal> {
        let cross = self.config.cross_region.get(region).map(String::as_str);
        let Some(routed) = routed else {
            return Err(Refusal::Unmapped);
        };
        if let Some(cross) = cross.filter(|c| *c == routed) {
            return Ok(Destination::CrossRegion(cross));
        }
        let Some((cluster, (service, served))) = self.pools.get_key_value(routed) else {
            return Err(Refusal::Unmapped);
        };
        if served == region {
            return Ok(Destination::Pool(cluster));
        }
        let pool = self
            .config
            .services
            .get(service)
            .and_then(|regions| regions.get(region))
            .and_then(|clusters| clusters.first());
        match (pool, cross) {
            (Some(pool), _) => Ok(Destination::Pool(pool)),
            (None, Some(cross)) => Ok(Destination::CrossRegion(cross)),
            (None, None) => Err(Refusal::NoPool),
        }
    }

    /// The reply refusing a request pinned to `region`.
    pub fn refusal(&self, head: &RequestHead<'_>, refusal: Refusal, region: &str) -> LocalReply {
        let message = match refusal {
            Refusal::NoPool => format!(
                "this gateway ({}) reaches no upstream serving region {region}",
                self.config.region
            ),
            Refusal::Unmapped => format!(
                "the request's route leads to no pool this gateway knows the region of \
                 (gateway region {})",
                self.config.region
            ),
            Refusal::Conflict => {
                "the token's region and the tenant's configured region differ".to_owned()
            }
        };
        let reason = refusal.reason();
        LocalReply::json_error(
            head,
            refusal.status(),
            &json!({"error": reason, "message": message, "region": region}),
            Vec::new(),
            format!("ctxgate_residency_denied{{{reason}}}"),
        )
    }
}
