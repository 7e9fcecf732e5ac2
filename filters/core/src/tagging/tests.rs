use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;
use config::VariantConfig;

fn tagger(config: Value) -> Tagger {
    Tagger::from_json(config.to_string().as_bytes()).unwrap()
}

fn identity(tenant: &str, tier: &str) -> Caller {
    Caller {
        tenant: tenant.into(),
        subject: format!("{tenant}-user"),
        tier: tier.into(),
        issuer: "iss".into(),
        actors: vec![],
        rate_limits: None,
        claims: BTreeMap::from([("data_region".to_owned(), "eu".to_owned())]),
        ..Caller::default()
    }
}

fn op(name: &str, context: &str) -> MatchedOperation {
    MatchedOperation {
        name: name.into(),
        action: "read".into(),
        context: context.into(),
        target: None,
    }
}

fn tags(
    t: &Tagger,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    id: Option<Caller>,
    operation: Option<MatchedOperation>,
) -> Owned {
    let headers: crate::headers::Headers = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
        .collect();
    let tags = t.tag(&TagInput {
        head: RequestHead {
            method,
            path,
            headers: &headers,
        },
        identity: id.as_ref(),
        operation: operation.as_ref(),
        end_of_stream: !headers
            .iter()
            .any(|(k, _)| k == "content-length" || k == "transfer-encoding"),
        mcp: None,
    });
    Owned {
        remove_headers: tags
            .remove_headers
            .iter()
            .map(|h| (*h).to_owned())
            .collect(),
        set_headers: tags
            .values
            .iter()
            .map(|t| (t.header.to_owned(), t.value.to_string()))
            .collect(),
        values: tags
            .values
            .iter()
            .map(|t| (t.name.to_owned(), t.value.to_string()))
            .collect(),
    }
}

/// [`Tags`], owned (the tags borrow the tagger and the input).
struct Owned {
    remove_headers: Vec<String>,
    set_headers: Vec<(String, String)>,
    values: BTreeMap<String, String>,
}

fn demo() -> Tagger {
    tagger(json!({
        "rules": [
            {"name": "large", "when": {"size": {"above": 1048576}}, "set": {"type": "large-context"}},
            {"name": "graph", "when": {"operation": ["graph_traversal"]}, "set": {"type": "graph", "priority": "high"}},
            {"name": "premium", "when": {"claim": {"name": "tier", "exact": "premium"}}, "set": {"priority": "high"}},
            {"name": "batch", "when": {"all": [{"method": ["POST"]}, {"path": {"prefix": "/v1/batch"}}]}, "set": {"priority": "low"}},
            {"name": "internal", "when": {"header": {"name": "x-debug", "regex": "on|yes"}}, "set": {"type": "debug"}}
        ],
        "tenants": {"globex": {"region": "us-east"}},
        "from_claims": {"region": "data_region"},
        "defaults": {"type": "standard", "priority": "normal", "region": "us"}
    }))
}

#[test]
fn rules_set_tags_first_match_wins() {
    let t = demo();
    let acme = Some(identity("acme", "standard"));
    let v = tags(
        &t,
        "GET",
        "/v1/contexts/a",
        &[("content-length", "2000000")],
        acme.clone(),
        Some(op("read", "a")),
    )
    .values;
    assert_eq!(v["type"], "large-context");
    assert_eq!(v["priority"], "normal");
    let v = tags(
        &t,
        "POST",
        "/v1/graph/traverse",
        &[],
        acme.clone(),
        Some(op("graph_traversal", "p/x")),
    )
    .values;
    assert_eq!(
        (v["type"].as_str(), v["priority"].as_str()),
        ("graph", "high")
    );
    let v = tags(
        &t,
        "GET",
        "/v1/contexts/a",
        &[("content-length", "5000000")],
        acme.clone(),
        Some(op("graph_traversal", "a")),
    )
    .values;
    assert_eq!(v["type"], "large-context", "an earlier rule wins the tag");
    assert_eq!(v["priority"], "high", "a later rule still sets other tags");
    let v = tags(
        &t,
        "POST",
        "/v1/batch/x",
        &[],
        Some(identity("acme", "premium")),
        None,
    )
    .values;
    assert_eq!(v["priority"], "high", "premium precedes batch");
    let v = tags(&t, "GET", "/x", &[("x-debug", "yes")], acme, None).values;
    assert_eq!(v["type"], "debug");
}

#[test]
fn routing_never_trusts_a_declared_size() {
    let t = demo();
    let acme = Some(identity("acme", "standard"));
    let v = tags(
        &t,
        "GET",
        "/v1/contexts/a",
        &[("x-context-size", "5000000")],
        acme.clone(),
        None,
    )
    .values;
    assert_eq!(v["type"], "standard", "a size header is only a claim");
    // A body of unknown length is routed by the configured default.
    let chunked = [("transfer-encoding", "chunked")];
    let v = tags(&t, "PUT", "/v1/contexts/a", &chunked, acme.clone(), None).values;
    assert_eq!(v["type"], "standard");
    let big_default = tagger(json!({
        "unknown_size_bytes": 10_000_000,
        "rules": [{"name": "large", "when": {"size": {"above": 1048576}}, "set": {"type": "large-context"}}],
        "defaults": {"type": "standard"}
    }));
    let v = tags(&big_default, "PUT", "/v1/contexts/a", &chunked, acme, None).values;
    assert_eq!(v["type"], "large-context");
}

#[test]
fn tenant_table_claims_and_defaults_fill_in() {
    let t = demo();
    let v = tags(
        &t,
        "GET",
        "/x",
        &[],
        Some(identity("globex", "standard")),
        None,
    )
    .values;
    assert_eq!(v["region"], "us-east", "tenant table before claims");
    let v = tags(
        &t,
        "GET",
        "/x",
        &[],
        Some(identity("acme", "standard")),
        None,
    )
    .values;
    assert_eq!(v["region"], "eu", "from the data_region claim");
    assert_eq!(v["tenant"], "acme");
    let v = tags(&t, "GET", "/x", &[], None, None).values;
    assert_eq!(v["region"], "us");
    assert!(!v.contains_key("tenant"), "no identity, no tenant tag");
}

#[test]
fn owned_headers_from_the_client_are_removed() {
    let t = demo();
    let out = tags(
        &t,
        "GET",
        "/x",
        &[
            ("x-context-type", "large-context"),
            ("x-context-tenant", "evil"),
            ("x-other", "1"),
        ],
        None,
        None,
    );
    assert_eq!(
        out.remove_headers,
        vec!["x-context-tenant", "x-context-type"]
    );
    assert!(
        out.set_headers
            .contains(&("x-context-type".to_owned(), "standard".to_owned()))
    );
}

#[test]
fn context_id_comes_from_the_operation() {
    let t = tagger(
        json!({"operations": [{"name": "read", "methods": ["GET"], "path": "/v1/contexts/{context}", "action": "read"}]}),
    );
    let v = tags(&t, "GET", "/v1/contexts/Projects//A", &[], None, None).values;
    assert_eq!(v["context_id"], "projects/a");
}

#[test]
fn variants_are_stable_and_follow_the_weights() {
    let t = tagger(
        json!({"variant": {"salt": "exp-7", "variants": [{"name": "a", "weight": 70}, {"name": "b", "weight": 30}]}}),
    );
    let variant = |tenant: &str| {
        tags(
            &t,
            "GET",
            "/x",
            &[],
            Some(identity(tenant, "standard")),
            None,
        )
        .values["variant"]
            .clone()
    };
    assert_eq!(variant("acme"), variant("acme"));
    let a = (0..10_000)
        .filter(|i| variant(&format!("tenant-{i}")) == "a")
        .count();
    assert!((6800..=7200).contains(&a), "{a} of 10000 on a");
}

#[test]
fn path_conditions_see_the_canonical_path() {
    let t = tagger(
        json!({"rules": [{"when": {"path": {"exact": "/v1/admin"}}, "set": {"priority": "low"}}]}),
    );
    assert_eq!(
        tags(&t, "GET", "/v1//x/../admin?q=1", &[], None, None)
            .values
            .get("priority")
            .map(String::as_str),
        Some("low")
    );
}

#[test]
fn not_and_any_combine() {
    let t = tagger(
        json!({"rules": [{"when": {"not": {"any": [{"method": ["GET"]}, {"header": {"name": "x-a", "present": true}}]}}, "set": {"type": "write"}}]}),
    );
    assert!(
        !tags(&t, "GET", "/", &[], None, None)
            .values
            .contains_key("type")
    );
    assert!(
        !tags(&t, "PUT", "/", &[("x-a", "")], None, None)
            .values
            .contains_key("type")
    );
    assert_eq!(
        tags(&t, "PUT", "/", &[], None, None).values["type"],
        "write"
    );
}

#[test]
fn bad_rules_fail_with_the_field() {
    let err = |config: Value| {
        Tagger::from_json(config.to_string().as_bytes())
            .err()
            .unwrap()
            .to_string()
    };
    assert!(
        err(json!({"rules": [{"when": {"path": {"regex": "(unclosed"}}, "set": {"type": "x"}}]}))
            .starts_with("rules[0].when.path.regex")
    );
    assert!(err(json!({"rules": [{"set": {"colour": "x"}}]})).starts_with("rules[0].set.colour"));
    assert!(err(json!({"rules": [{"when": {"path": {"exact": "/a", "prefix": "/b"}}, "set": {"type": "x"}}]})).starts_with("rules[0].when.path"));
    assert!(
        err(json!({"rules": [{"when": {"all": []}, "set": {"type": "x"}}]}))
            .starts_with("rules[0].when.all")
    );
    assert!(
        err(json!({"rules": [{"set": {"type": "bad\nvalue"}}]})).starts_with("rules[0].set.type")
    );
    assert!(err(json!({"headers": {"type": "X-Type"}})).starts_with("headers.type"));
    assert!(
        err(json!({"variant": {"variants": [{"name": "a", "weight": 0}]}}))
            .starts_with("variant.variants")
    );
    assert!(
        err(json!({"rules": [{"when": {"colour": "red"}, "set": {"type": "x"}}]}))
            .contains("rules[0].when")
    );
}

#[test]
fn an_mcp_call_declared_in_the_headers_is_tagged_with_its_method_and_tool() {
    let t = Tagger::from_json(br#"{"defaults": {"type": "standard"}}"#).unwrap();
    let headers: crate::headers::Headers =
        [("x-mcp-tool", "forged"), ("mcp-name", "search_context")]
            .into_iter()
            .collect();
    let call = Declared {
        method: "tools/call".into(),
        tool: Some("search_context".into()),
    };
    let tagged = |mcp: Option<&Declared>| {
        let tags = t.tag(&TagInput {
            head: RequestHead {
                method: "POST",
                path: "/mcp",
                headers: &headers,
            },
            identity: None,
            operation: None,
            end_of_stream: false,
            mcp,
        });
        let values: Vec<(String, String)> = tags
            .values
            .iter()
            .map(|t| (t.header.to_owned(), t.value.to_string()))
            .collect();
        (tags.remove_headers.contains(&"x-mcp-tool"), values)
    };
    let (removed, values) = tagged(Some(&call));
    assert!(removed, "the client's x-mcp-tool is removed");
    assert!(values.contains(&("x-mcp-method".into(), "tools/call".into())));
    assert!(values.contains(&("x-mcp-tool".into(), "search_context".into())));
    // Without a declared call: the forged header is still removed, and
    // no MCP tag is set.
    let (removed, values) = tagged(None);
    assert!(removed);
    assert!(
        values.iter().all(|(h, _)| !h.starts_with("x-mcp-")),
        "{values:?}"
    );
}

#[test]
fn a_split_is_pinned_and_a_new_salt_reshuffles() {
    let split = |salt: &str| {
        let config: VariantConfig = serde_json::from_value(
            json!({"salt": salt, "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}),
        )
        .unwrap();
        let split = Split::new(&config);
        (0..16)
            .map(|i| split.pick(&format!("tenant-{i}")).to_owned())
            .collect::<Vec<_>>()
            .concat()
    };
    // The assignment is part of the contract: a release that moved
    // callers between variants would break running experiments.
    assert_eq!(split("exp-7"), "bbbabababaaababb");
    assert_ne!(split("exp-7"), split("exp-8"));
}
