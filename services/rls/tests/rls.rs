//! Black-box tests: the server runs in-process on 127.0.0.1:0 (or as the real
//! binary) and is called with a tonic client, the way Envoy calls it. The
//! Redis tests start their own `redis-server` on a free port.
//!
//! Counting tests use day (or longer) windows so that they cannot straddle
//! a window boundary except within a second of midnight UTC.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ctxgate_e2e::Redis;
use ctxgate_rls::config::Domain;
use ctxgate_rls::{Limits, RlsHandle, StorageConfig, spawn_in_thread};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use tonic::transport::Channel;

const LIMITS: &str = "\
domain: ctxgate
descriptors:
  - key: tenant
    rate_limit: { unit: day, requests_per_unit: 100 }
  - key: tenant
    value: acme
    rate_limit: { unit: day, requests_per_unit: 3, name: acme-daily }
    descriptors:
      - key: operation
        value: search
        rate_limit: { unit: year, requests_per_unit: 2 }
  - key: tenant
    value: shadow
    shadow_mode: true
    rate_limit: { unit: day, requests_per_unit: 1 }
  - key: internal
    rate_limit: { unlimited: true }
";

fn limits(text: &str) -> Limits {
    let mut limits = Limits::default();
    limits
        .add(Domain::parse(Path::new("test.yaml"), text).unwrap())
        .unwrap();
    limits
}

fn start(storage: StorageConfig) -> RlsHandle {
    spawn_in_thread("127.0.0.1:0", limits(LIMITS), storage).unwrap()
}

fn memory() -> StorageConfig {
    StorageConfig::Memory {
        max_counters: 10_000,
    }
}

async fn client(rls: &RlsHandle) -> RateLimitServiceClient<Channel> {
    RateLimitServiceClient::connect(rls.url()).await.unwrap()
}

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(key, value)| Entry {
                key: (*key).into(),
                value: (*value).into(),
            })
            .collect(),
        ..Default::default()
    }
}

fn request(domain: &str, descriptors: &[&[(&str, &str)]], hits_addend: u32) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors: descriptors.iter().map(|d| descriptor(d)).collect(),
        hits_addend,
    }
}

async fn ask(
    client: &mut RateLimitServiceClient<Channel>,
    request: RateLimitRequest,
) -> RateLimitResponse {
    client
        .should_rate_limit(request)
        .await
        .unwrap()
        .into_inner()
}

fn code(status: &DescriptorStatus) -> Code {
    Code::try_from(status.code).unwrap()
}

fn overall(response: &RateLimitResponse) -> Code {
    Code::try_from(response.overall_code).unwrap()
}

#[tokio::test]
async fn it_honours_hits_addend() {
    let rls = start(memory());
    let mut client = client(&rls).await;
    let tenant: &[(&str, &str)] = &[("tenant", "t1")];

    let response = ask(&mut client, request("ctxgate", &[tenant], 10)).await;
    assert_eq!(overall(&response), Code::Ok);
    assert_eq!(response.statuses[0].limit_remaining, 90);

    // hits_addend 0 (unset) counts as 1.
    let response = ask(&mut client, request("ctxgate", &[tenant], 0)).await;
    assert_eq!(response.statuses[0].limit_remaining, 89);

    // A descriptor's own hits_addend wins; 0 there only checks.
    let mut check_only = request("ctxgate", &[tenant], 50);
    check_only.descriptors[0].hits_addend = Some(UInt64Value { value: 0 });
    let response = ask(&mut client, check_only).await;
    assert_eq!(response.statuses[0].limit_remaining, 89);

    // A cost bigger than what is left is over the limit, and still counted.
    let response = ask(&mut client, request("ctxgate", &[tenant], 90)).await;
    assert_eq!(overall(&response), Code::OverLimit);
    assert_eq!(response.statuses[0].limit_remaining, 0);
    let response = ask(&mut client, request("ctxgate", &[tenant], 1)).await;
    assert_eq!(overall(&response), Code::OverLimit);
}

#[tokio::test]
async fn it_limits_with_full_statuses() {
    let rls = start(memory());
    let mut client = client(&rls).await;
    let acme: &[(&str, &str)] = &[("tenant", "acme")];

    for remaining in [2, 1, 0] {
        let response = ask(&mut client, request("ctxgate", &[acme], 1)).await;
        assert_eq!(overall(&response), Code::Ok);
        assert_eq!(response.statuses[0].limit_remaining, remaining);
    }
    let response = ask(&mut client, request("ctxgate", &[acme], 1)).await;
    assert_eq!(overall(&response), Code::OverLimit);
    assert_eq!(response.statuses.len(), 1);
    let status = &response.statuses[0];
    assert_eq!(code(status), Code::OverLimit);
    assert_eq!(status.limit_remaining, 0);
    let limit = status.current_limit.as_ref().unwrap();
    assert_eq!(limit.requests_per_unit, 3);
    assert_eq!(limit.unit, i32::from(Unit::Day));
    assert_eq!(limit.name, "acme-daily");
    let reset = status.duration_until_reset.unwrap();
    assert!((1..=86_400).contains(&reset.seconds), "{reset:?}");

    // Other values of the same key count on their own.
    let response = ask(&mut client, request("ctxgate", &[&[("tenant", "zeta")]], 1)).await;
    assert_eq!(overall(&response), Code::Ok);
    assert_eq!(response.statuses[0].limit_remaining, 99);
}

#[tokio::test]
async fn it_matches_nested_descriptors() {
    let rls = start(memory());
    let mut client = client(&rls).await;
    let acme: &[(&str, &str)] = &[("tenant", "acme")];
    let search: &[(&str, &str)] = &[("tenant", "acme"), ("operation", "search")];
    let browse: &[(&str, &str)] = &[("tenant", "acme"), ("operation", "browse")];

    for _ in 0..2 {
        let response = ask(&mut client, request("ctxgate", &[acme, search, browse], 1)).await;
        assert_eq!(overall(&response), Code::Ok);
    }
    let response = ask(&mut client, request("ctxgate", &[acme, search, browse], 1)).await;
    assert_eq!(overall(&response), Code::OverLimit);
    let [tenant, operation, unmatched] = &response.statuses[..] else {
        panic!("one status per descriptor: {response:?}");
    };
    assert_eq!(code(tenant), Code::Ok);
    assert_eq!(tenant.limit_remaining, 0);
    assert_eq!(code(operation), Code::OverLimit);
    let limit = operation.current_limit.as_ref().unwrap();
    assert_eq!(
        (limit.requests_per_unit, limit.unit),
        (2, i32::from(Unit::Year))
    );
    // [tenant=acme, operation=browse] has no node of its own: no limit.
    assert_eq!(code(unmatched), Code::Ok);
    assert_eq!(unmatched.current_limit, None);
}

#[tokio::test]
async fn it_passes_unknown_domains_unmatched_and_unlimited_descriptors() {
    let rls = start(memory());
    let mut client = client(&rls).await;

    let response = ask(
        &mut client,
        request("elsewhere", &[&[("tenant", "acme")]], 1000),
    )
    .await;
    assert_eq!(overall(&response), Code::Ok);
    assert_eq!(response.statuses.len(), 1);
    assert_eq!(code(&response.statuses[0]), Code::Ok);
    assert_eq!(response.statuses[0].current_limit, None);

    let descriptors: &[&[(&str, &str)]] = &[&[("path", "/x")], &[("internal", "job")]];
    let response = ask(&mut client, request("ctxgate", descriptors, 1000)).await;
    assert_eq!(overall(&response), Code::Ok);
    assert_eq!(response.statuses[0].current_limit, None);
    assert_eq!(response.statuses[1].current_limit, None);
    assert_eq!(response.statuses[1].limit_remaining, u32::MAX);
}

#[tokio::test]
async fn it_only_reports_shadow_mode_limits() {
    let rls = start(memory());
    let mut client = client(&rls).await;
    let shadow: &[(&str, &str)] = &[("tenant", "shadow")];
    ask(&mut client, request("ctxgate", &[shadow], 1)).await;
    let response = ask(&mut client, request("ctxgate", &[shadow], 1)).await;
    assert_eq!(overall(&response), Code::Ok);
    assert_eq!(code(&response.statuses[0]), Code::Ok);
    assert_eq!(response.statuses[0].limit_remaining, 0);
    assert!(response.statuses[0].current_limit.is_some());
}

#[tokio::test]
async fn it_refuses_what_it_cannot_count() {
    let rls = start(memory());
    let mut client = client(&rls).await;
    let mut refund = request("ctxgate", &[&[("tenant", "t")]], 1);
    refund.descriptors[0].is_negative_hits = true;
    let status = client.should_rate_limit(refund).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn it_reports_health() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let rls = start(memory());
    let channel = Channel::from_shared(rls.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "envoy.service.ratelimit.v3.RateLimitService"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            response.status,
            ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
}

/// Waits until `millis` past the start of the next whole second, and returns
/// that second (Unix time).
async fn next_second_at(millis: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let second = now.as_secs() + 1;
    let target = Duration::from_secs(second) + Duration::from_millis(millis);
    tokio::time::sleep(target - now).await;
    second
}

fn unix_second() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// One hit per second allowed. A counter first hit late in window N must not
/// leak into N + 2 (the next window that shares its storage slot), and N + 1
/// must start from zero. Retries when the machine is too slow to keep two
/// hits inside one second.
async fn windows_are_aligned_and_start_from_zero(storage: StorageConfig) {
    let text = "domain: fast\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n";
    let rls = spawn_in_thread("127.0.0.1:0", limits(text), storage).unwrap();
    let mut client = client(&rls).await;
    for attempt in 0..5 {
        let k = format!("attempt-{attempt}");
        let k: &[(&str, &str)] = &[("k", &k)];
        let n = next_second_at(850).await;
        let first = ask(&mut client, request("fast", &[k], 1)).await;
        let second = ask(&mut client, request("fast", &[k], 1)).await;
        if unix_second() != n {
            continue;
        }
        assert_eq!(overall(&first), Code::Ok);
        assert_eq!(overall(&second), Code::OverLimit);
        let reset = second.statuses[0].duration_until_reset.unwrap();
        assert_eq!(reset.seconds, 1);

        assert_eq!(next_second_at(20).await, n + 1);
        let next = ask(&mut client, request("fast", &[k], 1)).await;
        let after_next = next_second_at(20).await;
        let later = ask(&mut client, request("fast", &[k], 1)).await;
        if after_next != n + 2 || unix_second() != n + 2 {
            continue;
        }
        assert_eq!(overall(&next), Code::Ok, "window n + 1 starts from zero");
        assert_eq!(overall(&later), Code::Ok, "window n + 2 starts from zero");
        return;
    }
    panic!("could not keep two hits inside one second in 5 attempts");
}

#[tokio::test]
async fn it_starts_each_aligned_window_from_zero() {
    windows_are_aligned_and_start_from_zero(memory()).await;
}

// --- Redis ------------------------------------------------------------------

fn redis_storage(redis: &Redis) -> StorageConfig {
    StorageConfig::Redis {
        url: redis.url(),
        timeout: Duration::from_millis(500),
    }
}

#[tokio::test]
async fn replicas_sharing_redis_share_one_count() {
    let redis = Redis::start();
    let first = start(redis_storage(&redis));
    let second = start(redis_storage(&redis));
    let mut clients = [client(&first).await, client(&second).await];
    let acme: &[(&str, &str)] = &[("tenant", "acme")];

    // Limit 3: the hits alternate between the replicas.
    for (i, remaining) in [2, 1, 0].into_iter().enumerate() {
        let response = ask(&mut clients[i % 2], request("ctxgate", &[acme], 1)).await;
        assert_eq!(overall(&response), Code::Ok, "hit {i}");
        assert_eq!(response.statuses[0].limit_remaining, remaining, "hit {i}");
    }
    for client in &mut clients {
        let response = ask(client, request("ctxgate", &[acme], 1)).await;
        assert_eq!(overall(&response), Code::OverLimit);
    }
    // hits_addend is shared too.
    let t: &[(&str, &str)] = &[("tenant", "t")];
    ask(&mut clients[0], request("ctxgate", &[t], 60)).await;
    let response = ask(&mut clients[1], request("ctxgate", &[t], 30)).await;
    assert_eq!(response.statuses[0].limit_remaining, 10);
}

#[tokio::test]
async fn it_starts_each_aligned_window_from_zero_on_redis() {
    let redis = Redis::start();
    windows_are_aligned_and_start_from_zero(redis_storage(&redis)).await;
}

#[tokio::test]
async fn it_answers_unavailable_while_redis_is_down_and_recovers() {
    let mut redis = Redis::start();
    let rls = start(redis_storage(&redis));
    let mut client = client(&rls).await;
    let t: &[(&str, &str)] = &[("tenant", "t")];
    let response = ask(&mut client, request("ctxgate", &[t], 1)).await;
    assert_eq!(response.statuses[0].limit_remaining, 99);

    redis.stop();
    for _ in 0..3 {
        let started = Instant::now();
        let status = client
            .should_rate_limit(request("ctxgate", &[t], 1))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("Redis") || status.message().contains("storage"),
            "{status:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }
    // Paths without storage still answer.
    let response = ask(&mut client, request("elsewhere", &[t], 1)).await;
    assert_eq!(overall(&response), Code::Ok);

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let response = loop {
        match client.should_rate_limit(request("ctxgate", &[t], 1)).await {
            Ok(response) => break response.into_inner(),
            Err(status) if Instant::now() < deadline => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("still failing after Redis came back: {status:?}"),
        }
    };
    // The restarted Redis kept nothing: counting starts again.
    assert_eq!(overall(&response), Code::Ok);
    assert_eq!(response.statuses[0].limit_remaining, 99);
}

#[test]
fn it_refuses_to_start_without_redis() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let storage = StorageConfig::Redis {
        url: format!("redis://127.0.0.1:{port}"),
        timeout: Duration::from_millis(300),
    };
    let err = spawn_in_thread("127.0.0.1:0", limits(LIMITS), storage).unwrap_err();
    assert!(
        format!("{err:#}").contains(&format!(
            "cannot connect to Redis at redis://127.0.0.1:{port}"
        )),
        "{err:#}"
    );
}

// --- The binary -------------------------------------------------------------

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ctxgate-rls"))
}

#[test]
fn the_binary_refuses_a_bad_config_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n",
    )
    .unwrap();
    let output = binary().arg("--config").arg(&file).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:4:24: unknown unit 'fortnight'",
            file.display()
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_binary_serves_a_directory_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ctxgate.yaml"), LIMITS).unwrap();
    std::fs::write(
        dir.path().join("other.yaml"),
        "domain: other\ndescriptors:\n  - key: k\n    rate_limit: {unit: day, requests_per_unit: 1}\n",
    )
    .unwrap();
    let mut child = binary()
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("storage memory"), "{line}");
    assert!(
        line.contains("domains ctxgate (4 limits, 1 unlimited)"),
        "{line}"
    );
    assert!(line.contains("other (1 limit)"), "{line}");
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();

    let mut client = RateLimitServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let k: &[(&str, &str)] = &[("k", "v")];
    assert_eq!(
        overall(&ask(&mut client, request("other", &[k], 1)).await),
        Code::Ok
    );
    assert_eq!(
        overall(&ask(&mut client, request("other", &[k], 1)).await),
        Code::OverLimit
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("ctxgate-rls stopped"), "{rest}");
}
