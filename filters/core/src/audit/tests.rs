//! The trail end to end against the in-memory host: pipeline decisions
//! -> queue -> shipper -> chained batches -> verifier.

use std::collections::VecDeque;

use jwt_simple::prelude::*;
use serde_json::{Value, json};

use super::batch::{self, verify};
use super::config::AuditConfig;
use super::shipper::Shipper;
use crate::config::ConfigError;
use crate::host::{CallResponse, Host, StreamId};
use crate::mock::MockHost;
use crate::pipeline::{Seeds, Worker};
use crate::test_keys::{jwks, sign};

const NOW_MS: u64 = 1_800_000_000_000;
const ISS: &str = "https://idp.test";
const KEY: &str = "pseudonym-key-0123456789";

fn audit_section(extra: Value) -> Value {
    let mut section = json!({
        "singleton_vm_id": "gw",
        "pseudonymize_subjects": true,
        "pseudonym_key": KEY,
        "collector": {"cluster": "audit"},
        "batch": {"max_events": 4, "max_delay_ms": 100},
        "backlog": {"max_events": 10},
    });
    if let (Some(s), Value::Object(e)) = (section.as_object_mut(), extra) {
        s.extend(e);
    }
    section
}

fn gateway_config(key: &ES256KeyPair, audit: Value) -> Value {
    json!({
        "auth": {
            "providers": [{"name": "test", "issuer": ISS, "audiences": ["context-api"], "jwks": {"inline": jwks(key)}}],
            "operations": [{"name": "read", "methods": ["GET"], "path": "/v1/contexts/{context}", "action": "read"}]
        },
        "ratelimit": {"tiers": {"standard": [{"name": "per_minute", "limit": 2, "window_seconds": 60}], "anonymous": [{"name": "per_minute", "limit": 100, "window_seconds": 60}]}, "slots": 64},
        "tagging": {"headers": {"tier": "x-tier"}, "from_claims": {"tier": "tier"}},
        "audit": audit,
    })
}

/// The gateway's worker (reporter 7) on `host`.
fn worker(host: &mut MockHost, config: &Value) -> Result<Worker, ConfigError> {
    let seeds = Seeds {
        secret: [1; 16],
        reporter: 7,
    };
    Worker::new(config.to_string().as_bytes(), "t", seeds, host)
}

fn token(key: &ES256KeyPair) -> String {
    let now = NOW_MS / 1000;
    sign(
        key,
        json!({"iss": ISS, "sub": "alice", "aud": "context-api", "iat": now, "exp": now + 600,
               "tenant_id": "acme", "context_scopes": ["read:projects/*"], "act": {"sub": "agent-7"},
               "delegation_rights": {"can_delegate": true, "max_delegation_depth": 2, "delegatable_scopes": ["read:projects/*"]}}),
    )
}

fn request(worker: &mut Worker, host: &mut MockHost, id: StreamId, headers: &[(&str, &str)]) {
    let mut all = vec![(":method", "GET"), (":authority", "api")];
    all.extend_from_slice(headers);
    host.open(id, &all);
    host.streams
        .get_mut(&id)
        .unwrap()
        .attributes
        .insert("client_address", "10.0.0.1:4000".into());
    worker.on_request_headers(host, id, true);
    worker.on_done(host, id);
}

fn shipper(host: &mut MockHost, audit: Value) -> Shipper {
    let config: AuditConfig = serde_json::from_value(audit).unwrap();
    Shipper::new(config, "c0ffee".into(), host).unwrap()
}

/// Answers the last call with `status`; returns the body it carried.
fn answer(shipper: &mut Shipper, host: &mut MockHost, status: Option<u16>) -> Vec<u8> {
    let call = host.last_call().unwrap().clone();
    let response = CallResponse::Http {
        status,
        body: Vec::new(),
    };
    assert!(shipper.on_call_response(host, call.id, &response));
    call.message
}

/// Ticks (time passing) and answers every delivery with 200.
fn deliver_all(shipper: &mut Shipper, host: &mut MockHost) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    let mut answered = 0;
    for _ in 0..20 {
        if host.calls.len() > answered {
            // Counted first: a success ships the next full batch at once.
            answered = host.calls.len();
            lines.push(answer(shipper, host, Some(200)));
        }
        host.now_ms += 200;
        shipper.on_tick(host);
    }
    lines
}

/// Every decision of a batch, each with its record's fields merged in.
fn events(line: &[u8]) -> Vec<Value> {
    let v: Value = serde_json::from_slice(line).unwrap();
    let mut out = Vec::new();
    for record in v["records"].as_array().unwrap() {
        for decision in record["decisions"].as_array().unwrap() {
            let mut e = record.clone();
            e.as_object_mut().unwrap().remove("decisions");
            // [stage, decision, ms, status?, reason?]
            let d = decision.as_array().unwrap();
            let ms = record["time_ms"].as_u64().unwrap() + d[2].as_u64().unwrap();
            let fields = e.as_object_mut().unwrap();
            fields.insert("stage".into(), d[0].clone());
            fields.insert("decision".into(), d[1].clone());
            fields.insert("time_ms".into(), ms.into());
            if let [_, _, _, status, reason] = d.as_slice() {
                fields.insert("status".into(), status.clone());
                fields.insert("reason".into(), reason.clone());
            }
            out.push(e);
        }
    }
    out
}

#[test]
fn every_decision_becomes_one_event_in_one_message_per_request() {
    let key = ES256KeyPair::generate();
    let mut host = MockHost::new(NOW_MS);
    host.audit_queue = Some(VecDeque::new());
    let config = gateway_config(&key, audit_section(json!({})));
    let mut worker = worker(&mut host, &config).unwrap();
    let signed = token(&key);
    let bearer = format!("Bearer {signed}");
    for (id, rid) in [(1, "r1"), (2, "r2"), (3, "r3")] {
        request(
            &mut worker,
            &mut host,
            id,
            &[
                (":path", "/v1/contexts/projects/a?x=1"),
                ("authorization", &bearer),
                ("x-request-id", rid),
            ],
        );
    }
    request(
        &mut worker,
        &mut host,
        4,
        &[(":path", "/v1/contexts/projects/a"), ("x-request-id", "r4")],
    );
    // No `:path` (a CONNECT tunnel): refused before any stage.
    request(&mut worker, &mut host, 5, &[("x-request-id", "r5")]);
    assert_eq!(host.audit_enqueues, 0, "nothing per request");
    worker.on_tick(&mut host);
    assert_eq!(host.audit_enqueues, 0, "records wait a while in the worker");
    host.now_ms += 50;
    worker.on_tick(&mut host);
    assert_eq!(host.audit_enqueues, 1, "then go in one message");

    let mut shipper = shipper(&mut host, audit_section(json!({})));
    shipper.on_queue_ready(&mut host);
    let lines = deliver_all(&mut shipper, &mut host);
    assert_eq!(lines.len(), 2, "batches of whole records, at most 4 events");
    let (first, second) = (lines[0].clone(), lines[1].clone());
    let all: Vec<Value> = events(&first).into_iter().chain(events(&second)).collect();
    let summary: Vec<(String, String, String, String)> = all
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("-").to_owned();
            (s("request_id"), s("stage"), s("decision"), s("reason"))
        })
        .collect();
    let t = |a: &str, b: &str, c: &str, d: &str| {
        (a.to_owned(), b.to_owned(), c.to_owned(), d.to_owned())
    };
    assert_eq!(
        summary,
        [
            t("r1", "auth", "allow", "-"),
            t("r1", "ratelimit", "allow", "-"),
            t("r2", "auth", "allow", "-"),
            t("r2", "ratelimit", "allow", "-"),
            t("r3", "auth", "allow", "-"),
            t(
                "r3",
                "ratelimit",
                "deny",
                "ctxgate_ratelimit_refused{local_limit}"
            ),
            t("r4", "auth", "deny", "ctxgate_auth_denied{missing_token}"),
            t(
                "r5",
                "request",
                "deny",
                "ctxgate_request_refused{incomplete_head}"
            ),
        ],
        "tagging does not decide and is not audited"
    );
    let raw = String::from_utf8_lossy(&second);
    assert!(
        raw.contains(
            r#""decisions":[["auth","allow",0],["ratelimit","deny",0,429,"ctxgate_ratelimit_refused{local_limit}"]]"#
        ),
        "one array per decision: {raw}"
    );
    let e = &all[0];
    assert_eq!(e["time_ms"], NOW_MS);
    assert_eq!(e["tenant"], "acme");
    assert_eq!(e["service"], "agent-7");
    assert_eq!(e["actors"], json!(["agent-7"]));
    assert_eq!(e["operation"], "read");
    assert_eq!(e["context"], "projects/a");
    assert_eq!(e["path"], "/v1/contexts/projects/a", "no query");
    assert_eq!(e["client"], "10.0.0.1", "the address, not the port");
    let pseudonym = super::event::hex(&hmac_sha256::HMAC::mac(b"alice", KEY.as_bytes())[..16]);
    assert_eq!(e["subject"], pseudonym.as_str());
    let token = signed;
    assert_eq!(
        e["token"],
        super::event::token_digest(token.as_bytes()).as_str()
    );
    for line in [&first, &second] {
        let text = String::from_utf8_lossy(line);
        assert!(
            !text.contains(&token) && !text.contains("alice"),
            "no token, no subject in clear"
        );
    }
    let verified = verify([first.as_slice(), second.as_slice()]).unwrap();
    assert_eq!(
        (verified.batches, verified.events, verified.dropped),
        (2, 8, 0)
    );
}

#[test]
fn a_failed_delivery_is_retried_with_the_same_bytes_after_a_backoff() {
    let mut host = MockHost::new(NOW_MS);
    host.audit_queue = Some(VecDeque::new());
    let mut shipper = shipper(
        &mut host,
        audit_section(json!({"retry": {"initial_backoff_ms": 100, "max_backoff_ms": 400}})),
    );
    let decision = super::event::Decision {
        stage: "auth",
        time_ms: NOW_MS,
        refusal: None,
    };
    let facts = super::event::RequestFacts {
        request_id: Some("r"),
        method: "GET",
        path: "/",
        client: None,
        established: None,
        token: None,
    };
    let four = [
        decision.clone(),
        decision.clone(),
        decision.clone(),
        decision,
    ];
    let mut message = super::event::Message::new(1);
    message.add(&four, &facts, None);
    host.audit_enqueue(message.bytes()).unwrap();
    shipper.on_queue_ready(&mut host);
    assert_eq!(host.calls.len(), 1, "a full batch goes at once");
    let sent = answer(&mut shipper, &mut host, None);
    shipper.on_tick(&mut host);
    assert_eq!(host.calls.len(), 1, "no retry before the backoff");
    host.now_ms += 100;
    shipper.on_tick(&mut host);
    let retried = answer(&mut shipper, &mut host, Some(503));
    assert_eq!(sent, retried, "a retry resends the same batch");
    host.now_ms += 150;
    shipper.on_tick(&mut host);
    assert_eq!(host.calls.len(), 2, "the backoff doubled");
    host.now_ms += 50;
    shipper.on_tick(&mut host);
    assert_eq!(answer(&mut shipper, &mut host, Some(200)), sent);
    assert_eq!(batch::head(&sent).unwrap().seq, 1);
    shipper.on_tick(&mut host);
    assert_eq!(host.calls.len(), 3, "nothing left to send");
    // The workers learn what the singleton took on its tick.
    let (value, _) = host
        .shared()
        .get(&super::recorder::drained_key("ctxgate_audit", 1))
        .unwrap();
    assert_eq!(value, 4u64.to_le_bytes());
}

#[test]
fn beyond_the_backlog_events_are_dropped_counted_and_recorded_in_the_chain() {
    let mut host = MockHost::new(NOW_MS);
    host.audit_queue = Some(VecDeque::new());
    // backlog 10, batch 4: the collector is away.
    let mut shipper = shipper(&mut host, audit_section(json!({})));
    host.refuse_calls = true;
    let decision = super::event::Decision {
        stage: "auth",
        time_ms: NOW_MS,
        refusal: Some((401, "x".into())),
    };
    let facts = super::event::RequestFacts {
        request_id: Some("r"),
        method: "GET",
        path: "/",
        client: None,
        established: None,
        token: None,
    };
    for _ in 0..15 {
        let mut message = super::event::Message::new(1);
        message.add(std::slice::from_ref(&decision), &facts, None);
        host.audit_enqueue(message.bytes()).unwrap();
    }
    // A worker that dropped 2 of its own says so in its next message.
    let mut message = super::event::Message::new(2);
    message.add(std::slice::from_ref(&decision), &facts, None);
    message.set_dropped(2);
    host.audit_enqueue(message.bytes()).unwrap();
    shipper.on_queue_ready(&mut host);
    shipper.on_tick(&mut host);
    assert_eq!(host.metric("ctxgate_audit.dropped"), 6);
    assert_eq!(host.metric("ctxgate_audit.dropped_backlog_full"), 6);
    host.refuse_calls = false;
    let mut lines = Vec::new();
    for _ in 0..10 {
        host.now_ms += 2_000;
        shipper.on_tick(&mut host);
        if host
            .calls
            .last()
            .is_some_and(|c| c.id as usize > lines.len())
        {
            lines.push(answer(&mut shipper, &mut host, Some(200)));
        }
    }
    let summary = verify(lines.iter().map(Vec::as_slice)).unwrap();
    assert_eq!(
        (summary.events, summary.dropped),
        (10, 8),
        "10 kept, 6 + 2 lost and recorded"
    );
}

fn chain_of(n: u64) -> Vec<Vec<u8>> {
    let mut prev = batch::GENESIS.to_owned();
    (1..=n)
        .map(|seq| {
            let b = batch::encode(
                "c1",
                seq,
                &prev,
                NOW_MS,
                0,
                1,
                br#"{"decisions":[{"stage":"auth"}]}"#,
            );
            prev = b.hash;
            b.bytes
        })
        .collect()
}

#[test]
fn the_verifier_names_the_first_edited_deleted_or_swapped_line() {
    let lines = chain_of(4);
    let check = |lines: &[Vec<u8>]| verify(lines.iter().map(Vec::as_slice));
    assert_eq!(check(&lines).unwrap().batches, 4);

    let mut edited = lines.clone();
    edited[1] = String::from_utf8(edited[1].clone())
        .unwrap()
        .replace("auth", "authz")
        .into_bytes();
    let broken = check(&edited).unwrap_err();
    assert_eq!((broken.line, broken.seq), (2, Some(2)));
    assert!(broken.what.contains("edited"), "{broken}");

    let mut deleted = lines.clone();
    deleted.remove(1);
    let broken = check(&deleted).unwrap_err();
    assert_eq!((broken.line, broken.seq), (2, Some(3)));
    assert!(broken.what.contains("expected seq 2"), "{broken}");

    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    assert_eq!(check(&swapped).unwrap_err().line, 2);

    // Re-numbering after a deletion is caught by the hash link.
    let mut prev = batch::GENESIS.to_owned();
    let forged: Vec<Vec<u8>> = [1u64, 2]
        .iter()
        .map(|seq| {
            let b = batch::encode("c1", *seq, &prev, NOW_MS, 0, 0, br#"{"decisions":[]}"#);
            prev = b.hash;
            b.bytes
        })
        .collect();
    let mixed = vec![lines[0].clone(), forged[1].clone()];
    let broken = check(&mixed).unwrap_err();
    assert!(broken.what.contains("prev"), "{broken}");
}

#[test]
fn a_worker_bounds_its_share_of_the_queue_without_a_round_trip_per_request() {
    let key = ES256KeyPair::generate();
    let mut host = MockHost::new(NOW_MS);
    host.audit_queue = Some(VecDeque::new());
    let config = gateway_config(&key, audit_section(json!({"queue_limit": 3})));
    let mut worker = worker(&mut host, &config).unwrap();
    for id in 1..=5 {
        request(
            &mut worker,
            &mut host,
            id,
            &[(":path", "/v1/contexts/projects/a")],
        );
    }
    assert_eq!(host.audit_enqueues, 0, "records wait for the tick");
    host.now_ms += 1_000;
    worker.on_tick(&mut host);
    assert_eq!(host.audit_enqueues, 1, "one message per tick");
    assert_eq!(host.metric("ctxgate_audit.dropped_queue_full"), 2);
    let message = host.audit_queue.as_ref().unwrap().back().unwrap().clone();
    let received = super::event::parse_message(&message).unwrap();
    assert_eq!(
        (received.reporter, received.dropped, received.records.len()),
        (7, 2, 3),
        "two requests over the bound: dropped, and the message says so"
    );
    // The singleton takes them and publishes; the worker reads it on its tick.
    let mut shipper = shipper(&mut host, audit_section(json!({})));
    shipper.on_queue_ready(&mut host);
    shipper.on_tick(&mut host);
    worker.on_tick(&mut host);
    request(
        &mut worker,
        &mut host,
        6,
        &[(":path", "/v1/contexts/projects/a")],
    );
    host.now_ms += 1_000;
    worker.on_tick(&mut host);
    assert_eq!(host.audit_enqueues, 2);
    assert_eq!(
        host.metric("ctxgate_audit.dropped_queue_full"),
        2,
        "room again"
    );
    let message = host.audit_queue.as_mut().unwrap().pop_back().unwrap();
    let received = super::event::parse_message(&message).unwrap();
    assert_eq!(
        (received.reporter, received.dropped, received.events()),
        (7, 0, 1)
    );
}

#[test]
fn the_client_may_come_from_the_trusted_forwarded_for_element() {
    let key = ES256KeyPair::generate();
    let mut host = MockHost::new(NOW_MS);
    host.audit_queue = Some(VecDeque::new());
    let forwarded = json!({"client": {"source": "forwarded_for", "trusted_hops": 1}});
    let config = gateway_config(&key, audit_section(forwarded.clone()));
    let mut worker = worker(&mut host, &config).unwrap();
    for (id, xff) in [(1, Some("6.6.6.6, 203.0.113.9")), (2, None)] {
        let mut headers = vec![(":path", "/v1/contexts/projects/a")];
        headers.extend(xff.map(|v| ("x-forwarded-for", v)));
        request(&mut worker, &mut host, id, &headers);
    }
    host.now_ms += 1_000;
    worker.on_tick(&mut host);
    let mut shipper = shipper(&mut host, audit_section(forwarded));
    shipper.on_queue_ready(&mut host);
    let clients: Vec<Value> = deliver_all(&mut shipper, &mut host)
        .iter()
        .flat_map(|line| events(line))
        .map(|e| e["client"].clone())
        .collect();
    assert_eq!(
        clients,
        [json!("203.0.113.9"), json!("unknown")],
        "the element Envoy appended, never the connection's address or the client's own"
    );
}

#[test]
fn pseudonymisation_needs_a_key_and_the_field_is_named() {
    let key = ES256KeyPair::generate();
    let mut host = MockHost::new(NOW_MS);
    let config = gateway_config(
        &key,
        json!({"singleton_vm_id": "gw", "pseudonymize_subjects": true}),
    );
    let e = worker(&mut host, &config).err().unwrap();
    assert_eq!(e.field, "audit.pseudonym_key");
}

#[test]
fn a_record_is_valid_json_whatever_its_strings_hold() {
    use super::event::{Decision, Message, RequestFacts, parse_message};
    let path = "/v1/\"q\"\\x\u{1}\n/é";
    let decisions = [
        Decision {
            stage: "auth",
            time_ms: NOW_MS,
            refusal: None,
        },
        Decision {
            stage: "ratelimit",
            time_ms: NOW_MS + 3,
            refusal: Some((429, "ctxgate_\"limited\"".to_owned())),
        },
    ];
    let facts = RequestFacts {
        request_id: Some("id-1"),
        method: "GET",
        path,
        client: Some("203.0.113.9"),
        established: None,
        token: Some("0123456789abcdef"),
    };
    let mut message = Message::new(7);
    message.add(&decisions, &facts, None);
    let received = parse_message(message.bytes()).unwrap();
    assert_eq!(received.records.len(), 1);
    let (events, json) = &received.records[0];
    assert_eq!(*events, 2);
    let record: Value = serde_json::from_slice(json).unwrap();
    assert_eq!(
        record,
        json!({
            "time_ms": NOW_MS,
            "request_id": "id-1",
            "method": "GET",
            "path": path,
            "client": "203.0.113.9",
            "token": "0123456789abcdef",
            "decisions": [["auth", "allow", 0], ["ratelimit", "deny", 3, 429, "ctxgate_\"limited\""]],
        }),
        "absent facts are left out"
    );
}
