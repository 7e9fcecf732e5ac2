use std::collections::BTreeMap;

use serde_json::json;

use super::*;

fn residency(claim: Option<&str>) -> Residency {
    let config: ResidencyConfig = serde_json::from_value(json!({
        "region": "eu",
        "tenants": {"acme": "eu"},
        "claim": claim,
        "services": {
            "context": {"eu": ["eu-pool", "eu-archive"], "us": ["us-pool"]},
            "mcp": {"us": ["mcp-us"]},
        },
        "cross_region": {"ap": "ap-remote"},
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    Residency::new(config).unwrap_or_else(|e| panic!("{e}"))
}

fn caller(tenant: &str, region: Option<&str>) -> Caller {
    Caller {
        tenant: tenant.into(),
        subject: "alice".into(),
        tier: "standard".into(),
        issuer: "https://idp".into(),
        actors: Vec::new(),
        rate_limits: None,
        claims: region
            .map(|r| BTreeMap::from([("data_region".to_owned(), r.to_owned())]))
            .unwrap_or_default(),
        ..Caller::default()
    }
}

#[test]
fn the_table_and_the_claim_pin_and_must_agree() {
    let r = residency(Some("data_region"));
    assert_eq!(r.pin(None), Pin::Unpinned);
    assert_eq!(r.pin(Some(&caller("acme", None))), Pin::Region("eu"));
    assert_eq!(r.pin(Some(&caller("acme", Some("eu")))), Pin::Region("eu"));
    assert_eq!(r.pin(Some(&caller("other", Some("ap")))), Pin::Region("ap"));
    assert_eq!(r.pin(Some(&caller("other", Some("")))), Pin::Unpinned);
    assert_eq!(
        r.pin(Some(&caller("acme", Some("us")))),
        Pin::Conflict {
            claim: "us",
            table: "eu"
        }
    );
    // Without `claim` configured, a claim means nothing.
    let r = residency(None);
    assert_eq!(r.pin(Some(&caller("other", Some("ap")))), Pin::Unpinned);
}

#[test]
fn a_pinned_request_stays_with_its_service_in_its_region() {
    let r = residency(None);
    let to = |routed: Option<&str>, region: &str| r.destination(routed, region);
    use Destination::{CrossRegion, Pool};
    assert_eq!(to(Some("eu-pool"), "eu"), Ok(Pool("eu-pool")));
    assert_eq!(to(Some("eu-archive"), "eu"), Ok(Pool("eu-archive")));
    assert_eq!(to(Some("us-pool"), "eu"), Ok(Pool("eu-pool")));
    assert_eq!(to(Some("eu-archive"), "us"), Ok(Pool("us-pool")));
    // The MCP service has no EU pool, and EU no cross-region cluster.
    assert_eq!(to(Some("mcp-us"), "eu"), Err(Refusal::NoPool));
    // A service without a pool in AP goes across.
    assert_eq!(to(Some("us-pool"), "ap"), Ok(CrossRegion("ap-remote")));
    assert_eq!(to(Some("mcp-us"), "ap"), Ok(CrossRegion("ap-remote")));
    assert_eq!(to(Some("ap-remote"), "ap"), Ok(CrossRegion("ap-remote")));
    // Where an unknown cluster (or no cluster) is, is not known.
    assert_eq!(to(Some("unlisted"), "eu"), Err(Refusal::Unmapped));
    assert_eq!(to(Some("ap-remote"), "eu"), Err(Refusal::Unmapped));
    assert_eq!(to(None, "eu"), Err(Refusal::Unmapped));
    assert_eq!(to(Some("us-pool"), "sa"), Err(Refusal::NoPool));
}
