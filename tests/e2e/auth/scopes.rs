//! Authorization: scope rules, canonical paths as Envoy hands them to the
//! filter, contexts taken from query parameters, and delegation.

use ctxgate_demo::MintOptions;
use ctxgate_e2e::Request;
use serde_json::json;

use crate::support::*;

#[test]
fn it_grants_scopes_on_their_subtree_by_action_and_by_whole_segments() {
    let keys = TestKeys::generate();
    let gate = Gate::start(inline_config(&keys));
    let ctx = |path: &str| format!("/v1/contexts/{path}");

    // ACTION:PATH grants PATH and everything below it, nothing beside it.
    let eng = keys.scoped(&["read:projects/eng"]);
    for path in [
        "projects/eng",
        "projects/eng/docs",
        "projects/eng/docs/a/b/c",
    ] {
        let seen = forwarded(&gate.get(&ctx(path), &eng));
        assert_eq!(seen.header("x-context-path").as_deref(), Some(path));
    }
    insufficient_scope(&gate.get(&ctx("projects"), &eng), "read:projects");
    insufficient_scope(&gate.get(&ctx("projects/mkt"), &eng), "read:projects/mkt");
    // Per segment, not per character.
    insufficient_scope(
        &gate.get(&ctx("projects/engineering"), &eng),
        "read:projects/engineering",
    );
    insufficient_scope(&gate.get(&ctx("projects/en"), &eng), "read:projects/en");
    insufficient_scope(&gate.get(&ctx("projectsx/eng"), &eng), "read:projectsx/eng");

    // admin > write > read.
    let admin = keys.scoped(&["admin:projects/a"]);
    let write = keys.scoped(&["write:projects/a"]);
    let read = keys.scoped(&["read:projects/a"]);
    for method in ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"] {
        let response = gate.call(method, &ctx("projects/a/x"), &admin);
        assert_eq!(response.status, 200, "admin may {method}");
    }
    for method in ["GET", "PUT", "POST", "PATCH"] {
        forwarded(&gate.call(method, &ctx("projects/a/x"), &write));
    }
    insufficient_scope(
        &gate.call("DELETE", &ctx("projects/a/x"), &write),
        "admin:projects/a/x",
    );
    forwarded(&gate.get(&ctx("projects/a/x"), &read));
    for method in ["PUT", "POST", "PATCH"] {
        insufficient_scope(
            &gate.call(method, &ctx("projects/a"), &read),
            "write:projects/a",
        );
    }
    insufficient_scope(
        &gate.call("DELETE", &ctx("projects/a"), &read),
        "admin:projects/a",
    );

    // PATH/* grants what is below PATH, not PATH itself.
    let below = keys.scoped(&["read:projects/*"]);
    forwarded(&gate.get(&ctx("projects/anything"), &below));
    forwarded(&gate.get(&ctx("projects/anything/deeper"), &below));
    insufficient_scope(&gate.get(&ctx("projects"), &below), "read:projects");

    // `*` stands for exactly one segment.
    let docs = keys.scoped(&["write:projects/*/docs"]);
    forwarded(&gate.call("PUT", &ctx("projects/eng/docs"), &docs));
    forwarded(&gate.call("PUT", &ctx("projects/mkt/docs/plan"), &docs));
    insufficient_scope(
        &gate.call("PUT", &ctx("projects/eng/wiki"), &docs),
        "write:projects/eng/wiki",
    );
    insufficient_scope(
        &gate.call("PUT", &ctx("projects/docs"), &docs),
        "write:projects/docs",
    );
    insufficient_scope(
        &gate.call("PUT", &ctx("projects/a/b/docs"), &docs),
        "write:projects/a/b/docs",
    );

    // Scopes in the token are canonicalized too; unusable ones grant nothing.
    let odd = keys.scoped(&[
        "read:Projects//Mixed/",
        "read:*",
        "read:",
        "delete:projects/a",
        "projects/a",
    ]);
    forwarded(&gate.get(&ctx("projects/mixed/x"), &odd));
    forwarded(&gate.get(&ctx("anything"), &odd));
    insufficient_scope(
        &gate.call("PUT", &ctx("projects/a"), &odd),
        "write:projects/a",
    );
    // A token without scopes can do nothing.
    let none = keys.scoped(&[]);
    insufficient_scope(&gate.get(&ctx("projects/a"), &none), "read:projects/a");

    // Requests that match no operation are refused once authenticated.
    for (method, path) in [
        ("GET", "/v1/other"),
        ("OPTIONS", "/v1/contexts/projects/a"),
        ("GET", "/v1/contexts"),
    ] {
        forbidden(&gate.call(method, path, &admin), "unknown_operation");
    }

    assert_eq!(gate.wait_metric("denied.unknown_operation", 3), 3);
    assert_eq!(gate.metric("denied.insufficient_scope"), 16);
    gate.assert_vm_healthy();
}

#[test]
fn it_decides_on_the_canonical_path_whatever_the_encoding_on_the_wire() {
    let keys = TestKeys::generate();
    let gate = Gate::start(inline_config(&keys));
    let eng = keys.scoped(&["read:projects/eng", "write:projects/eng"]);

    // Dot segments, plain or percent-encoded, are resolved before the check
    // (by Envoy's normalize_path): climbing out of the granted subtree is a
    // request for the other context.
    for path in [
        "/v1/contexts/projects/eng/../secret",
        "/v1/contexts/projects/eng/%2e%2e/secret",
        "/v1/contexts/projects/eng/%2E%2E/secret",
        "/v1/contexts/projects/eng/.%2e/secret",
        "/v1/contexts/projects/eng/./../secret",
    ] {
        insufficient_scope(&gate.get(path, &eng), "read:projects/secret");
    }
    // ...and harmless detours reach the granted context.
    for path in [
        "/v1/contexts/projects/eng/x/../y",
        "/v1/contexts/projects/eng/./y",
        "/v1/contexts/projects/eng/%2e/y",
        "/v1/contexts//projects//eng///y",
        "/v1//contexts/projects/eng/y",
    ] {
        let seen = forwarded(&gate.get(path, &eng));
        assert_eq!(
            seen.header("x-context-path").as_deref(),
            Some("projects/eng/y"),
            "{path}"
        );
    }
    // Climbing above the API root leaves the operation map.
    forbidden(
        &gate.get("/v1/contexts/../../../etc/passwd", &eng),
        "unknown_operation",
    );

    // Encoded slashes reach the filter undecoded (Envoy keeps them) and are
    // separators to it, as to a lenient upstream.
    let response = gate.get("/v1/contexts/projects%2Feng%2Fy", &eng);
    assert_eq!(
        forwarded(&response).header("x-context-path").as_deref(),
        Some("projects/eng/y")
    );
    insufficient_scope(
        &gate.get("/v1/contexts/projects/eng%2F..%2Fsecret", &eng),
        "read:projects/secret",
    );
    insufficient_scope(
        &gate.get("/v1/contexts/projects/eng%2f..%2f..%2fhr", &eng),
        "read:hr",
    );
    // Double encoding is refused outright, before any token is looked at.
    for path in [
        "/v1/contexts/projects/eng%252F..%252Fsecret",
        "/v1/contexts/projects%252Feng",
        "/v1/contexts/projects/eng/%252e%252e/secret",
    ] {
        invalid_request(&gate.get(path, &eng), "invalid_path");
        invalid_request(&gate.send(Request::get(path)), "invalid_path");
    }
    // Other hostile encodings of the path.
    for path in [
        "/v1/contexts/projects/eng%5Csecret",
        "/v1/contexts/projects/%ff",
        "/v1/contexts/projects/%zz",
        "/v1/contexts/projects%2F..%2F..%2F..%2F..%2Fetc",
    ] {
        invalid_request(&gate.get(path, &eng), "invalid_path");
    }

    // Context paths are case-insensitive: upper case is the same context.
    for path in [
        "/v1/contexts/PROJECTS/ENG/x",
        "/v1/contexts/Projects/Eng/X",
        "/v1/contexts/projects/ENG%2FX",
    ] {
        let seen = forwarded(&gate.get(path, &eng));
        assert_eq!(
            seen.header("x-context-path").as_deref(),
            Some("projects/eng/x"),
            "{path}"
        );
    }
    insufficient_scope(
        &gate.get("/v1/contexts/PROJECTS/SECRET", &eng),
        "read:projects/secret",
    );
    // The operation map's literal segments match whatever their case (a
    // case variant cannot fall through to "unmatched"), and the upstream
    // receives the path as the map spells it.
    let seen = forwarded(&gate.get("/V1/CONTEXTS/projects/eng", &eng));
    assert_eq!(seen.path(), "/v1/contexts/projects/eng");
    insufficient_scope(
        &gate.get("/V1/CONTEXTS/projects/secret", &eng),
        "read:projects/secret",
    );

    // Envoy itself refuses an encoded NUL before any filter runs.
    let response = gate.get("/v1/contexts/projects/eng%00", &eng);
    assert_eq!(
        (response.status, response.header("x-upstream")),
        (400, None)
    );

    assert_eq!(gate.wait_metric("denied.invalid_path", 10), 10);
    gate.assert_vm_healthy();
}

#[test]
fn it_takes_the_context_of_queries_and_traversals_from_the_query_string() {
    let keys = TestKeys::generate();
    let gate = Gate::start(inline_config(&keys));
    let eng = keys.scoped(&["read:projects/eng"]);

    for (endpoint, operation) in [
        ("/v1/query", "complex_query"),
        ("/v1/graph/traverse", "graph_traversal"),
    ] {
        for query in [
            "context=projects/eng",
            "context=projects%2Feng",
            "context=Projects/ENG",
            "limit=5&context=projects/eng&depth=2",
            "context=projects/eng/sub/../",
        ] {
            let target = format!("{endpoint}?{query}");
            let seen = forwarded(&gate.call("POST", &target, &eng));
            assert_eq!(
                seen.header("x-context-operation").as_deref(),
                Some(operation),
                "{target}"
            );
            assert_eq!(
                seen.header("x-context-path").as_deref(),
                Some("projects/eng"),
                "{target}"
            );
            // The upstream receives the context the decision was made on,
            // under the one spelling of the parameter, and the rest of the
            // query in order.
            let expected = if query.starts_with("limit=") {
                format!("{endpoint}?limit=5&context=projects/eng&depth=2")
            } else {
                format!("{endpoint}?context=projects/eng")
            };
            assert_eq!(seen.path(), expected, "{target}");
        }
        let sub = format!("{endpoint}?context=projects/eng/deep/er");
        let seen = forwarded(&gate.call("POST", &sub, &eng));
        assert_eq!(
            seen.header("x-context-path").as_deref(),
            Some("projects/eng/deep/er")
        );

        // Contexts the token does not grant.
        for (query, scope) in [
            ("context=projects/engineering", "read:projects/engineering"),
            ("context=projects", "read:projects"),
            ("context=projects/eng/../secret", "read:projects/secret"),
            ("context=projects/eng%2F..%2Fsecret", "read:projects/secret"),
            ("context=projects%2Feng%2F..%2F..%2Fhr", "read:hr"),
        ] {
            let target = format!("{endpoint}?{query}");
            insufficient_scope(&gate.call("POST", &target, &eng), scope);
        }

        // Missing, empty or invalid contexts are bad requests.
        for query in [
            "",
            "?",
            "?limit=5",
            "?contexts=projects/eng",
            "?context=",
            "?context=%2F",
            "?context=../projects/eng",
            "?context=projects%252Feng",
            "?context=projects/%25",
            "?context=projects%5Ceng",
        ] {
            let target = format!("{endpoint}{query}");
            invalid_request(&gate.call("POST", &target, &eng), "invalid_context");
        }
        // So is a context given twice, under any spelling: an upstream may
        // read either one.
        for query in [
            "?context=projects/eng&context=projects/eng",
            "?context=projects/eng&context=projects/secret",
            "?context=projects/eng&Context=projects/secret",
            "?context=projects/eng;context=projects/secret",
            "?context=projects/eng&%63ontext=projects/secret",
            "?context=projects/eng&c%6Fntext=projects/secret",
        ] {
            let target = format!("{endpoint}{query}");
            invalid_request(&gate.call("POST", &target, &eng), "repeated_parameter");
        }
        invalid_request(
            &gate.call("POST", &format!("{endpoint}?context=projects/%zz"), &eng),
            "invalid_query",
        );
        // A differently cased name is the parameter, forwarded in the one
        // spelling an upstream matching names exactly will read.
        let seen = forwarded(&gate.call("POST", &format!("{endpoint}?Context=projects/eng"), &eng));
        assert_eq!(seen.path(), format!("{endpoint}?context=projects/eng"));
        // Only POST is mapped, and nothing below the endpoint.
        forbidden(
            &gate.get(&format!("{endpoint}?context=projects/eng"), &eng),
            "unknown_operation",
        );
        forbidden(
            &gate.call("POST", &format!("{endpoint}/x?context=projects/eng"), &eng),
            "unknown_operation",
        );
    }
    assert_eq!(gate.wait_metric("denied.invalid_context", 20), 20);
    assert_eq!(gate.wait_metric("denied.repeated_parameter", 12), 12);
    assert_eq!(gate.wait_metric("denied.invalid_query", 2), 2);
    gate.assert_vm_healthy();
}

#[test]
fn it_checks_delegated_tokens_against_the_subjects_delegation_rights() {
    let keys = TestKeys::generate();
    let mut config = inline_config(&keys);
    config["max_delegation_depth"] = json!(3);
    let gate = Gate::start(config);
    let path = "/v1/contexts/projects/a/doc";

    // A chain of `depth` actors, current actor first (RFC 8693 `act`).
    let chain = |depth: usize| {
        let mut act = serde_json::Value::Null;
        for i in (1..=depth).rev() {
            let mut actor = json!({"sub": format!("agent-{i}")});
            if !act.is_null() {
                actor["act"] = act;
            }
            act = actor;
        }
        act
    };
    let token = |act: serde_json::Value, rights: serde_json::Value| {
        let mut extra = serde_json::Map::new();
        extra.insert("act".into(), act);
        if !rights.is_null() {
            extra.insert("delegation_rights".into(), rights);
        }
        keys.token(&MintOptions {
            extra_claims: extra,
            ..with_scopes(&["write:projects/*"])
        })
    };
    let rights = |can_delegate: bool, depth: u32| {
        json!({
            "can_delegate": can_delegate,
            "max_delegation_depth": depth,
            "delegatable_scopes": ["read:projects/a", "write:projects/a/doc"],
        })
    };

    // Within the rights: the upstream learns who acts for whom.
    let one = forwarded(&gate.get(path, &token(chain(1), rights(true, 2))));
    assert_eq!(
        one.header("x-context-actor-chain").as_deref(),
        Some("agent-1")
    );
    assert_eq!(one.header("x-context-subject").as_deref(), Some(SUBJECT));
    let two = forwarded(&gate.call("PUT", path, &token(chain(2), rights(true, 2))));
    assert_eq!(
        two.header("x-context-actor-chain").as_deref(),
        Some("agent-1,agent-2")
    );
    // Actor names cannot smuggle separators into the header.
    let odd = json!({"sub": "planner,v2", "act": {"sub": "100%"}});
    let seen = forwarded(&gate.get(path, &token(odd, rights(true, 2))));
    assert_eq!(
        seen.header("x-context-actor-chain").as_deref(),
        Some("planner%2Cv2,100%25")
    );

    // The subject may not delegate.
    forbidden(
        &gate.get(path, &token(chain(1), rights(false, 2))),
        "delegation_not_allowed",
    );
    forbidden(
        &gate.get(path, &token(chain(1), serde_json::Value::Null)),
        "delegation_not_allowed",
    );
    forbidden(
        &gate.get(
            path,
            &token(
                chain(1),
                json!({"max_delegation_depth": 5, "delegatable_scopes": ["read:projects/*"]}),
            ),
        ),
        "delegation_not_allowed",
    );
    // The chain is longer than the token allows, or than the gateway allows.
    forbidden(
        &gate.get(path, &token(chain(3), rights(true, 2))),
        "delegation_too_deep",
    );
    forbidden(
        &gate.get(path, &token(chain(1), rights(true, 0))),
        "delegation_too_deep",
    );
    forwarded(&gate.get(path, &token(chain(3), rights(true, 10))));
    forbidden(
        &gate.get(path, &token(chain(4), rights(true, 10))),
        "delegation_too_deep",
    );
    // The action is in the subject's scopes but not delegatable.
    let refusal = denied(
        &gate.call(
            "PUT",
            "/v1/contexts/projects/a/other",
            &token(chain(1), rights(true, 2)),
        ),
        403,
        "delegation_scope_not_delegable",
    );
    assert_eq!(refusal.attribute("error"), Some("insufficient_scope"));
    assert_eq!(refusal.attribute("scope"), Some("write:projects/a/other"));
    // Delegatable scopes never extend the subject's own scopes.
    let wide = json!({"can_delegate": true, "max_delegation_depth": 2, "delegatable_scopes": ["admin:projects/*"]});
    insufficient_scope(
        &gate.call("DELETE", path, &token(chain(1), wide)),
        "admin:projects/a/doc",
    );
    // A malformed chain is a malformed token.
    invalid_token(
        &gate.get(path, &token(json!({"act": {"sub": "x"}}), rights(true, 2))),
        "malformed_token",
    );
    invalid_token(
        &gate.get(path, &token(json!("agent-1"), rights(true, 2))),
        "malformed_token",
    );

    assert_eq!(gate.wait_metric("denied.delegation_too_deep", 3), 3);
    assert_eq!(gate.metric("denied.delegation_not_allowed"), 3);
    assert_eq!(gate.metric("denied.delegation_scope_not_delegable"), 1);
    gate.assert_vm_healthy();
}
