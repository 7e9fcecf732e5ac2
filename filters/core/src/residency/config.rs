//! The residency stage's configuration (JSON).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::{ConfigError, check_header_name};

/// Data residency: a tenant pinned to a region reaches only upstream pools
/// of that region, or that region's cross-region cluster, or nothing.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct ResidencyConfig {
    /// The region this gateway runs in (for refusals, logs and metrics).
    pub region: String,
    /// Tenants pinned by the operator (`tenant -> region`).
    #[serde(default)]
    pub tenants: BTreeMap<String, String>,
    /// A token claim naming the tenant's region (e.g. `data_region`). The
    /// auth stage must pass it on (`filter_state_claims`). When the claim
    /// and `tenants` both name a region they must agree.
    #[serde(default)]
    pub claim: Option<String>,
    /// The upstream services this gateway routes to, each with its pools
    /// (Envoy clusters) per region: `service -> region -> [cluster]`. A
    /// pinned request stays with the service its route chose, and goes to
    /// that cluster if it serves the tenant's region, else to the service's
    /// first pool in that region.
    pub services: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    /// For a region a service has no pool of here: the cluster that
    /// forwards to that region (`region -> cluster`, e.g. the region's own
    /// gateway), for every service. A region with neither is refused (421).
    #[serde(default)]
    pub cross_region: BTreeMap<String, String>,
    /// The header carrying a pinned tenant's region upstream (and to the
    /// route table). Set by the gateway; a client's copy is always removed.
    #[serde(default = "default_region_header")]
    pub region_header: String,
    /// The header naming the cluster a pinned request must go to. The
    /// route table must send requests carrying it to that cluster (an
    /// Envoy route with `cluster_header`, matched before any other); a
    /// client's copy is always removed.
    #[serde(default = "default_cluster_header")]
    pub cluster_header: String,
}

fn default_region_header() -> String {
    "x-context-region".to_owned()
}

fn default_cluster_header() -> String {
    "x-context-residency-cluster".to_owned()
}

impl ResidencyConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let named = |field: &str, value: &str| {
            if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                Err(ConfigError::new(
                    field,
                    format!("'{value}' is not a region or cluster name"),
                ))
            } else {
                Ok(())
            }
        };
        named("region", &self.region)?;
        for (tenant, region) in &self.tenants {
            named(&format!("tenants.{tenant}"), region)?;
        }
        if let Some(claim) = &self.claim {
            named("claim", claim)?;
        }
        if self.services.is_empty() {
            return Err(ConfigError::new(
                "services",
                "list the services this gateway routes to and their pools per region",
            ));
        }
        let mut seen = BTreeMap::new();
        for (service, regions) in &self.services {
            for (region, clusters) in regions {
                let field = format!("services.{service}.{region}");
                named(&field, region)?;
                if clusters.is_empty() {
                    return Err(ConfigError::new(field, "list at least one cluster"));
                }
                for cluster in clusters {
                    named(&field, cluster)?;
                    if let Some(first) = seen.insert(cluster.as_str(), field.clone()) {
                        return Err(ConfigError::new(
                            field,
                            format!(
                                "cluster '{cluster}' is also in {first}: a cluster is one pool"
                            ),
                        ));
                    }
                }
            }
        }
        for (region, cluster) in &self.cross_region {
            let field = format!("cross_region.{region}");
            named(&field, cluster)?;
            if let Some(pool) = seen.get(cluster.as_str()) {
                return Err(ConfigError::new(
                    field,
                    format!("cluster '{cluster}' is a pool ({pool}), not a cross-region cluster"),
                ));
            }
        }
        check_header_name("region_header", &self.region_header)?;
        check_header_name("cluster_header", &self.cluster_header)?;
        if self.region_header == self.cluster_header {
            return Err(ConfigError::new(
                "cluster_header",
                "must differ from region_header",
            ));
        }
        Ok(())
    }
}
