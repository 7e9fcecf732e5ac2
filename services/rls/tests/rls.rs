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

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ctxgate_e2e::Redis;
use ctxgate_rls::config::Domain;
use ctxgate_rls::service::Deadline;
use ctxgate_rls::{
    Dedupe, Limits, RlsHandle, StorageConfig, spawn_in_thread, spawn_in_thread_with,
};
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

// --- Report ids ---------------------------------------------------------------

const REPORTER: &str = "0123456789abcdef";

/// `request`, carrying report id `id` in `x-ctxgate-report`.
fn reported(id: &str, request: RateLimitRequest) -> tonic::Request<RateLimitRequest> {
    let mut request = tonic::Request::new(request);
    request
        .metadata_mut()
        .insert("x-ctxgate-report", id.parse().unwrap());
    request
}

/// Sends `request` as report `id` (e.g. `REPORTER-1`).
async fn report(
    client: &mut RateLimitServiceClient<Channel>,
    id: &str,
    request: RateLimitRequest,
) -> RateLimitResponse {
    client
        .should_rate_limit(reported(id, request))
        .await
        .unwrap()
        .into_inner()
}

/// What is left of `descriptor`'s limit, read without counting.
async fn remaining(
    client: &mut RateLimitServiceClient<Channel>,
    descriptor: &[(&str, &str)],
) -> u32 {
    let mut read = request("ctxgate", &[descriptor], 1);
    read.descriptors[0].hits_addend = Some(UInt64Value { value: 0 });
    ask(client, read).await.statuses[0].limit_remaining
}

fn with_horizon(seconds: u64) -> Dedupe {
    Dedupe {
        horizon: Duration::from_secs(seconds),
        ..Dedupe::default()
    }
}

/// The same id counts once, sent twice or ten times at once; other ids and
/// requests without one count each time.
async fn a_report_counts_once(storage: StorageConfig) {
    let rls = start(storage);
    let mut client = client(&rls).await;
    let t: &[(&str, &str)] = &[("tenant", "t")];
    let id = |seq: u32| format!("{REPORTER}-{seq}");

    let first = report(&mut client, &id(1), request("ctxgate", &[t], 5)).await;
    assert_eq!(first.statuses[0].limit_remaining, 95);
    let again = report(&mut client, &id(1), request("ctxgate", &[t], 5)).await;
    assert_eq!(overall(&again), Code::Ok);
    assert_eq!(
        again.statuses[0].limit_remaining, 95,
        "a duplicate adds nothing"
    );
    assert_eq!(remaining(&mut client, t).await, 95);

    let sends = (0..10).map(|_| {
        let mut client = client.clone();
        let id = id(2);
        tokio::spawn(async move { report(&mut client, &id, request("ctxgate", &[t], 3)).await })
    });
    for send in sends.collect::<Vec<_>>() {
        // The one applied and its duplicates all see the counter after it.
        assert_eq!(send.await.unwrap().statuses[0].limit_remaining, 92);
    }
    assert_eq!(remaining(&mut client, t).await, 92);

    let other_seq = report(&mut client, &id(3), request("ctxgate", &[t], 1)).await;
    assert_eq!(other_seq.statuses[0].limit_remaining, 91);
    let other_reporter = report(
        &mut client,
        "fedcba9876543210-3",
        request("ctxgate", &[t], 1),
    )
    .await;
    assert_eq!(other_reporter.statuses[0].limit_remaining, 90);
    for expected in [89, 88] {
        let plain = ask(&mut client, request("ctxgate", &[t], 1)).await;
        assert_eq!(plain.statuses[0].limit_remaining, expected);
    }
}

#[tokio::test]
async fn it_counts_a_report_once() {
    a_report_counts_once(memory()).await;
}

#[tokio::test]
async fn it_counts_a_report_once_on_redis() {
    let redis = Redis::start();
    a_report_counts_once(redis_storage(&redis)).await;
}

/// A duplicate is answered from the counters as they are now, as a read.
async fn a_duplicate_answers_from_the_current_counters(storage: StorageConfig) {
    let rls = start(storage);
    let mut client = client(&rls).await;
    // acme: 3 a day; big: 100 a day.
    let acme: &[(&str, &str)] = &[("tenant", "acme")];
    let big: &[(&str, &str)] = &[("tenant", "big")];
    let id = format!("{REPORTER}-1");

    let first = report(&mut client, &id, request("ctxgate", &[acme, big], 2)).await;
    assert_eq!(overall(&first), Code::Ok);
    let remaining_of =
        |r: &RateLimitResponse| (r.statuses[0].limit_remaining, r.statuses[1].limit_remaining);
    assert_eq!(remaining_of(&first), (1, 98));
    let again = report(&mut client, &id, request("ctxgate", &[acme, big], 2)).await;
    assert_eq!(overall(&again), Code::Ok);
    assert_eq!(remaining_of(&again), (1, 98));

    // Someone else takes acme over its limit.
    let other = ask(&mut client, request("ctxgate", &[acme], 2)).await;
    assert_eq!(overall(&other), Code::OverLimit);

    let late = report(&mut client, &id, request("ctxgate", &[acme, big], 2)).await;
    assert_eq!(overall(&late), Code::OverLimit);
    assert_eq!(code(&late.statuses[0]), Code::OverLimit);
    assert_eq!(code(&late.statuses[1]), Code::Ok);
    assert_eq!(remaining_of(&late), (0, 98), "still nothing added to big");
}

#[tokio::test]
async fn a_duplicate_answers_from_the_current_counters_in_memory() {
    a_duplicate_answers_from_the_current_counters(memory()).await;
}

#[tokio::test]
async fn a_duplicate_answers_from_the_current_counters_on_redis() {
    let redis = Redis::start();
    a_duplicate_answers_from_the_current_counters(redis_storage(&redis)).await;
}

#[tokio::test]
async fn it_refuses_malformed_report_ids_and_counts_nothing() {
    let rls = start(memory());
    let mut client = client(&rls).await;
    let t: &[(&str, &str)] = &[("tenant", "t")];
    for bad in [
        "0123456789abcde-1",                     // 15 hex digits
        "0123456789abcdef0-1",                   // 17
        "0123456789ABCDEF-1",                    // uppercase
        "0123456789abcdef1",                     // no dash
        "0123456789abcdef-x",                    // seq not a number
        "0123456789abcdef-",                     // no seq
        "0123456789abcdef--1",                   // signed seq
        "0123456789abcdef-18446744073709551616", // seq over u64
        "",
    ] {
        let status = client
            .should_rate_limit(reported(bad, request("ctxgate", &[t], 5)))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{bad:?}: {status:?}"
        );
        assert!(
            status.message().contains("x-ctxgate-report"),
            "{bad:?}: {status:?}"
        );
    }
    assert_eq!(remaining(&mut client, t).await, 100);
}

/// Redis hangs (SIGSTOP) with a report's script already in its socket: the
/// call and its retry fail with UNAVAILABLE, yet the script runs when Redis
/// resumes. The retry after that must add nothing, whichever ran first.
#[tokio::test]
async fn a_report_queued_in_a_hung_redis_counts_once() {
    let redis = Redis::start();
    let rls = start(StorageConfig::Redis {
        url: redis.url(),
        timeout: Duration::from_millis(300),
    });
    let mut client = client(&rls).await;
    let t: &[(&str, &str)] = &[("tenant", "t")];
    assert_eq!(remaining(&mut client, t).await, 100);
    let id = format!("{REPORTER}-7");

    redis.pause();
    for attempt in 0..2 {
        let started = Instant::now();
        let status = client
            .should_rate_limit(reported(&id, request("ctxgate", &[t], 5)))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::Unavailable,
            "attempt {attempt}: {status:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }
    redis.resume();

    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        match client
            .should_rate_limit(reported(&id, request("ctxgate", &[t], 5)))
            .await
        {
            Ok(response) => break response.into_inner(),
            Err(status) if Instant::now() < deadline => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("still failing after Redis resumed: {status:?}"),
        }
    };
    assert_eq!(answer.statuses[0].limit_remaining, 95);
    // Whatever Redis still had queued has run by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(remaining(&mut client, t).await, 95, "counted exactly once");
    let retry = report(&mut client, &id, request("ctxgate", &[t], 5)).await;
    assert_eq!(retry.statuses[0].limit_remaining, 95);
}

/// The layout the crate docs describe (what an operator finds in Redis):
/// counters per window with a two-window expiry set on their first hit, and
/// one bitmap of marks per 4096 ids of a reporter, expiring after the
/// horizon.
#[tokio::test]
async fn it_keeps_the_documented_redis_keys() {
    let redis = Redis::start();
    let rls = start(redis_storage(&redis));
    let mut client = client(&rls).await;
    let t: &[(&str, &str)] = &[("tenant", "t")];
    report(
        &mut client,
        &format!("{REPORTER}-4097"),
        request("ctxgate", &[t], 5),
    )
    .await;
    ask(&mut client, request("ctxgate", &[t], 1)).await;

    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let day = unix_second() / 86_400;
    let counter = format!("ctxgate-rls/ctxgate/tenant%%tenant=t%%{day}");
    let mark = format!("ctxgate-rls:report:{REPORTER}:1");
    let value: u64 = redis::cmd("GET")
        .arg(&counter)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(value, 6);
    let ttl: i64 = redis::cmd("TTL")
        .arg(&counter)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((86_400..=2 * 86_400).contains(&ttl), "counter TTL {ttl}");
    let bit: u8 = redis::cmd("GETBIT")
        .arg(&mark)
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(bit, 1);
    let ttl: i64 = redis::cmd("TTL")
        .arg(&mark)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((3_500..=3_600).contains(&ttl), "mark TTL {ttl}");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
}

/// The real binary, started with `args`, killed when dropped.
struct Binary {
    child: std::process::Child,
    addr: String,
    /// The metrics listener's address, when started with `--metrics-listen`.
    metrics: Option<String>,
}

impl Binary {
    fn start(args: &[&str]) -> Binary {
        let mut child = binary()
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("not serving: {line}"))
            .to_owned();
        let metrics = line
            .split("metrics on http://")
            .nth(1)
            .and_then(|rest| rest.split_once("/metrics"))
            .map(|(addr, _)| addr.to_owned());
        // Keep draining its log so that it never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Binary {
            child,
            addr,
            metrics,
        }
    }

    fn metrics_addr(&self) -> &str {
        self.metrics
            .as_deref()
            .expect("started without --metrics-listen")
    }

    /// GET /metrics, checked to be a 200 in the Prometheus text format.
    fn scrape(&self) -> String {
        let (head, body) = http(self.metrics_addr(), "GET /metrics HTTP/1.1\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("\r\ncontent-type: text/plain; version=0.0.4\r\n"),
            "{head}"
        );
        body
    }

    async fn client(&self) -> RateLimitServiceClient<Channel> {
        RateLimitServiceClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_report_retried_after_a_restart_counts_once() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ctxgate.yaml");
    std::fs::write(&config, LIMITS).unwrap();
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--redis-url",
        &redis.url(),
    ];
    let t: &[(&str, &str)] = &[("tenant", "t")];
    let id = format!("{REPORTER}-1");

    let rls = Binary::start(&args);
    let first = report(&mut rls.client().await, &id, request("ctxgate", &[t], 7)).await;
    assert_eq!(first.statuses[0].limit_remaining, 93);
    drop(rls); // SIGKILL, like a crash

    let rls = Binary::start(&args);
    let mut client = rls.client().await;
    let retry = report(&mut client, &id, request("ctxgate", &[t], 7)).await;
    assert_eq!(retry.statuses[0].limit_remaining, 93);
    let next = report(
        &mut client,
        &format!("{REPORTER}-2"),
        request("ctxgate", &[t], 7),
    )
    .await;
    assert_eq!(next.statuses[0].limit_remaining, 86);
}

/// A retry after the horizon is a new report (so the horizon must outlast
/// the clients' retries).
async fn marks_expire_after_the_horizon(storage: StorageConfig) {
    let rls =
        spawn_in_thread_with("127.0.0.1:0", limits(LIMITS), storage, with_horizon(1)).unwrap();
    let mut client = client(&rls).await;
    let t: &[(&str, &str)] = &[("tenant", "t")];
    let id = format!("{REPORTER}-1");
    for expected in [95, 95] {
        let response = report(&mut client, &id, request("ctxgate", &[t], 5)).await;
        assert_eq!(response.statuses[0].limit_remaining, expected);
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let late = report(&mut client, &id, request("ctxgate", &[t], 5)).await;
    assert_eq!(late.statuses[0].limit_remaining, 90);
}

#[tokio::test]
async fn marks_expire_after_the_horizon_in_memory() {
    marks_expire_after_the_horizon(memory()).await;
}

#[tokio::test]
async fn marks_expire_after_the_horizon_on_redis() {
    let redis = Redis::start();
    marks_expire_after_the_horizon(redis_storage(&redis)).await;
}

/// tonic drops a handler when its `grpc-timeout` elapses; one whose deadline
/// has already passed when it starts must not count (nor call Redis).
#[tokio::test]
async fn it_counts_nothing_once_the_callers_deadline_has_passed() {
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;

    let limiter = ctxgate_rls::rate_limiter(limits(LIMITS), &memory(), Dedupe::default())
        .await
        .unwrap();
    let t: &[(&str, &str)] = &[("tenant", "t")];
    let mut late = tonic::Request::new(request("ctxgate", &[t], 5));
    late.extensions_mut().insert(Deadline(Instant::now()));
    let status = limiter.should_rate_limit(late).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");

    let mut in_time = tonic::Request::new(request("ctxgate", &[t], 5));
    in_time
        .extensions_mut()
        .insert(Deadline(Instant::now() + Duration::from_secs(5)));
    let response = limiter
        .should_rate_limit(in_time)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.statuses[0].limit_remaining, 95,
        "the late call counted nothing"
    );
}

// --- Metrics ------------------------------------------------------------------

/// Sends `request_line` and a `Connection: close` request head to `addr`;
/// returns the response head and body.
fn http(addr: &str, request_line: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{request_line}Host: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    (head.to_owned(), body.to_owned())
}

/// The value of `series` (name and labels, e.g. `x_total{code="ok"}`).
fn sample(exposition: &str, series: &str) -> u64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{exposition}"))
        .parse()
        .unwrap()
}

const SERIES: [&str; 8] = [
    r#"ctxgate_rls_requests_total{code="ok"}"#,
    r#"ctxgate_rls_requests_total{code="over_limit"}"#,
    r#"ctxgate_rls_requests_total{code="error"}"#,
    "ctxgate_rls_hits_total",
    "ctxgate_rls_hits_refused_total",
    r#"ctxgate_rls_reports_total{outcome="applied"}"#,
    r#"ctxgate_rls_reports_total{outcome="duplicate"}"#,
    "ctxgate_rls_storage_errors_total",
];

/// Every series, in [`SERIES`] order.
fn samples(exposition: &str) -> [u64; 8] {
    SERIES.map(|series| sample(exposition, series))
}

fn config_file(dir: &tempfile::TempDir) -> String {
    let config = dir.path().join("ctxgate.yaml");
    std::fs::write(&config, LIMITS).unwrap();
    config.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_binary_counts_what_it_answers_on_its_metrics_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(&dir);
    let rls = Binary::start(&["--config", &config, "--metrics-listen", "127.0.0.1:0"]);

    let at_start = rls.scrape();
    assert_eq!(samples(&at_start), [0; 8], "{at_start}");
    for family in [
        "ctxgate_rls_requests_total",
        "ctxgate_rls_hits_total",
        "ctxgate_rls_hits_refused_total",
        "ctxgate_rls_reports_total",
        "ctxgate_rls_storage_errors_total",
    ] {
        assert!(
            at_start.contains(&format!("\n# HELP {family} "))
                || at_start.starts_with(&format!("# HELP {family} ")),
            "{at_start}"
        );
        assert!(
            at_start.contains(&format!("# TYPE {family} counter\n")),
            "{at_start}"
        );
    }

    let mut client = rls.client().await;
    let acme: &[(&str, &str)] = &[("tenant", "acme")];
    let t: &[(&str, &str)] = &[("tenant", "t")];
    // acme: 3 a day. Three OK, then one over the limit.
    for _ in 0..3 {
        assert_eq!(
            overall(&ask(&mut client, request("ctxgate", &[acme], 1)).await),
            Code::Ok
        );
    }
    assert_eq!(
        overall(&ask(&mut client, request("ctxgate", &[acme], 1)).await),
        Code::OverLimit
    );
    // A report, its retry, and a malformed id.
    let id = format!("{REPORTER}-1");
    report(&mut client, &id, request("ctxgate", &[t], 5)).await;
    report(&mut client, &id, request("ctxgate", &[t], 5)).await;
    client
        .should_rate_limit(reported("bad", request("ctxgate", &[t], 5)))
        .await
        .unwrap_err();

    let after = rls.scrape();
    assert_eq!(
        samples(&after),
        [
            5, // ok: three acme, the report and its duplicate
            1, // over_limit
            1, // error: the malformed id
            9, // hits: 4 acme, 5 of the report
            1, // refused: the fourth acme hit
            1, // reports applied
            1, // duplicates
            0, // storage errors
        ],
        "{after}"
    );
}

#[test]
fn the_metrics_endpoint_speaks_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(&dir);
    let rls = Binary::start(&["--config", &config, "--metrics-listen", "127.0.0.1:0"]);
    let addr = rls.metrics_addr();

    let (head, _) = http(addr, "GET /nope HTTP/1.1\r\n");
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
    let (head, _) = http(addr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n");
    assert!(head.starts_with("HTTP/1.1 405 "), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("\r\nallow: get"),
        "{head}"
    );
    // A query string is still /metrics.
    let (head, _) = http(addr, "GET /metrics?x=1 HTTP/1.1\r\n");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");

    // Keep-alive: two requests on one connection.
    let (head, body) = http(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(body.matches("HTTP/1.1 200 OK\r\n").count(), 1, "{body}");

    // An oversized head is refused (431), never served. The server may
    // close before reading all of it, resetting the connection: then the
    // write or the answer can be lost, but it is never a 200.
    for _ in 0..5 {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let huge = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(16 << 10)
        );
        let _ = stream.write_all(huge.as_bytes());
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431 "),
            "{answer}"
        );
    }

    // And it still serves.
    assert!(rls.scrape().contains("ctxgate_rls_hits_total 0\n"));
}

/// Waits until `series` reads `expected`, or fails with the last scrape.
async fn until_sample(rls: &Binary, series: &str, expected: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let exposition = rls.scrape();
        if sample(&exposition, series) == expected {
            return exposition;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached {expected}:\n{exposition}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A call whose caller gives up while Redis hangs is an error (tonic drops
/// its handler); a call that finds Redis down is a storage error too.
#[tokio::test]
async fn the_binary_counts_storage_errors_and_abandoned_calls() {
    let mut redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(&dir);
    let rls = Binary::start(&[
        "--config",
        &config,
        "--redis-url",
        &redis.url(),
        "--redis-timeout-ms",
        "3000",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let mut client = rls.client().await;
    let t: &[(&str, &str)] = &[("tenant", "t")];
    ask(&mut client, request("ctxgate", &[t], 1)).await;

    redis.pause();
    let mut impatient = tonic::Request::new(request("ctxgate", &[t], 1));
    impatient.set_timeout(Duration::from_millis(200));
    client.should_rate_limit(impatient).await.unwrap_err();
    let exposition = until_sample(&rls, r#"ctxgate_rls_requests_total{code="error"}"#, 1).await;
    assert_eq!(
        sample(&exposition, "ctxgate_rls_storage_errors_total"),
        0,
        "{exposition}"
    );
    redis.resume();

    redis.stop();
    let status = client
        .should_rate_limit(request("ctxgate", &[t], 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let exposition = rls.scrape();
    // The abandoned call's script may have run when Redis resumed, but the
    // service never saw it add anything: one hit.
    assert_eq!(
        samples(&exposition),
        [1, 0, 2, 1, 0, 0, 0, 1],
        "{exposition}"
    );
}

#[tokio::test]
async fn an_in_process_server_counts_too() {
    let rls = start(memory());
    let mut client = client(&rls).await;
    ask(&mut client, request("ctxgate", &[&[("tenant", "t")]], 4)).await;
    let snapshot = rls.metrics().snapshot();
    assert_eq!(
        (snapshot.requests_ok, snapshot.hits),
        (1, 4),
        "{snapshot:?}"
    );
}

#[test]
fn the_binary_documents_its_metrics() {
    let output = binary().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("--metrics-listen <ADDR>"), "{help}");
    for family in [
        r#"ctxgate_rls_requests_total{code="ok"|"over_limit"|"error"}"#,
        "ctxgate_rls_hits_total",
        "ctxgate_rls_hits_refused_total",
        r#"ctxgate_rls_reports_total{outcome="applied"|"duplicate"}"#,
        "ctxgate_rls_storage_errors_total",
    ] {
        assert!(help.contains(family), "{family} in {help}");
    }
}

#[test]
fn the_binary_documents_the_dedupe_horizon() {
    let output = binary().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("--dedupe-seconds"), "{help}");
    assert!(help.contains("[default: 3600]"), "{help}");
    assert!(help.contains("x-ctxgate-report"), "{help}");
}
