use std::collections::BTreeMap;

use serde_json::json;

use super::*;

fn residency(claim: Option<&str>) -> Residency {
    let config: ResidencyConfig = serde_json::from_value(json!({
        "region": "eu",
        "tenants": {"acme": "eu"},
        "claim": claim,
        "pools": {"eu-pool": "eu", "us-pool": "us", "ap-remote": "ap"},
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
fn a_pinned_request_goes_to_a_pool_of_its_region_or_across_or_nowhere() {
    let r = residency(None);
    let pool = |routed: Option<&str>, region: &str| r.destination(routed, region);
    assert_eq!(
        pool(Some("eu-pool"), "eu"),
        Some(Destination::Pool("eu-pool"))
    );
    assert_eq!(
        pool(Some("us-pool"), "eu"),
        Some(Destination::Pool("eu-pool"))
    );
    assert_eq!(
        pool(Some("unlisted"), "eu"),
        Some(Destination::Pool("eu-pool"))
    );
    assert_eq!(pool(None, "eu"), Some(Destination::Pool("eu-pool")));
    assert_eq!(
        pool(Some("eu-pool"), "us"),
        Some(Destination::Pool("us-pool"))
    );
    assert_eq!(
        pool(None, "ap"),
        Some(Destination::CrossRegion("ap-remote"))
    );
    assert_eq!(
        pool(Some("ap-remote"), "ap"),
        Some(Destination::CrossRegion("ap-remote"))
    );
    assert_eq!(pool(Some("eu-pool"), "sa"), None);
}
