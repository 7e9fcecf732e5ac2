//! Data residency: where a pinned tenant's request may go.
//!
//! A tenant is pinned to a region by the operator (`tenants`) or by a
//! token claim (`claim`); when both name one, they must agree. The
//! gateway knows the region each of its upstream pools (clusters) serves.
//! A pinned request is sent to a pool of its region, named in a trusted
//! header the route table routes by (`cluster_header`), so the router has
//! no choice left to make; without such a pool, to the region's
//! cross-region cluster if one is configured; otherwise it is refused. It
//! never silently lands elsewhere, and the cluster that answered is
//! checked against the one chosen.

pub mod config;
#[cfg(test)]
mod tests;

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
    /// No pool of the region is routed to from this gateway, and no
    /// cross-region cluster is configured (or the route table does not
    /// select it).
    NoPool,
    /// Claim and tenant table disagree.
    Conflict,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::NoPool => "no_pool_in_region",
            Refusal::Conflict => "region_conflict",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Refusal::NoPool => NO_POOL_STATUS,
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
}

impl Residency {
    pub fn new(config: ResidencyConfig) -> Result<Residency, crate::config::ConfigError> {
        config.validate()?;
        Ok(Residency { config })
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

    /// Where a request pinned to `region` goes: the cluster its route
    /// chose (`routed`) if that pool serves the region, else the first pool
    /// that does, else the region's cross-region cluster.
    pub fn destination(&self, routed: Option<&str>, region: &str) -> Option<Destination<'_>> {
        let cross = self.config.cross_region.get(region).map(String::as_str);
        let pool_of_region = |(cluster, served): &(&String, &String)| {
            *served == region && Some(cluster.as_str()) != cross
        };
        let kept = routed
            .and_then(|c| self.config.pools.get_key_value(c))
            .filter(pool_of_region);
        let pool = kept.or_else(|| self.config.pools.iter().find(pool_of_region));
        match (pool, cross) {
            (Some((cluster, _)), _) => Some(Destination::Pool(cluster)),
            (None, Some(cluster)) => Some(Destination::CrossRegion(cluster)),
            (None, None) => None,
        }
    }

    /// The reply refusing a request pinned to `region`.
    pub fn refusal(&self, head: &RequestHead<'_>, refusal: Refusal, region: &str) -> LocalReply {
        let message = match refusal {
            Refusal::NoPool => format!(
                "this gateway ({}) reaches no upstream serving region {region}",
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
