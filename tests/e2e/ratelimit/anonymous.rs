//! Who an anonymous client is: never something it writes itself. Its key
//! is the address Envoy computed for it, or the `X-Forwarded-For` element
//! the outermost trusted proxy appended (`trusted_hops` from the right),
//! and an IPv6 client is its whole prefix (/64 unless configured), which it
//! usually owns.

use ctxgate_e2e::{Client, Envoy, EnvoyConfig, Request, Route};
use serde_json::{Value, json};

use crate::support::*;

/// ratelimit -> a direct 200, anonymous clients allowed 3 requests each
/// (and never refilled during the test).
fn anonymous_gateway(anonymous: Value) -> EnvoyConfig {
    let mut config = json!({"tiers": {"standard": monthly(100), "anonymous": monthly(3)}});
    if !anonymous.is_null() {
        config["anonymous"] = anonymous;
    }
    EnvoyConfig::new()
        .filter(ratelimit_only(config))
        .route(Route::prefix("/").direct(200, "ok"))
}

/// The statuses of anonymous requests with these `X-Forwarded-For` values,
/// in order, on one connection.
fn statuses(client: &mut Client, forwarded_for: &[String]) -> Vec<u16> {
    forwarded_for
        .iter()
        .map(|xff| {
            client
                .send(&Request::get("/anything").header("x-forwarded-for", xff))
                .status
        })
        .collect()
}

#[test]
fn an_anonymous_client_is_the_forwarded_for_element_its_trusted_proxies_appended_never_the_first() {
    // Two trusted proxies: the outer one appends the client's address, the
    // inner one (10.0.0.2) its own. Whatever the client put before them is
    // its own invention.
    // Envoy leaves X-Forwarded-For as the proxies wrote it
    // (`use_remote_address` with `skip_xff_append`).
    let envoy = Envoy::start(
        &anonymous_gateway(json!({
            "client": {"source": "forwarded_for", "trusted_hops": 2, "ipv6_prefix": 48},
        }))
        .hcm_field("use_remote_address", json!(true))
        .hcm_field("skip_xff_append", json!(true)),
    );
    let mut client = Client::connect(envoy.listener_addr());
    let spoofed = |real: &str| -> Vec<String> {
        (1..=4)
            .map(|i| format!("198.51.100.{i}, {real}, 10.0.0.2"))
            .collect()
    };
    assert_eq!(
        statuses(&mut client, &spoofed("203.0.113.7")),
        [200, 200, 200, 429],
        "rotating the first element does not make a new client"
    );
    assert_eq!(
        statuses(&mut client, &spoofed("203.0.113.8")),
        [200, 200, 200, 429],
        "another client has its own bucket"
    );
    // IPv6 clients by their /48 here.
    let ipv6: Vec<String> = [
        "2001:db8:1:2::a",
        "2001:db8:1:2::b",
        "2001:db8:1:ffff::1",
        "2001:db8:1::9",
    ]
    .iter()
    .map(|a| format!("198.51.100.1, {a}, 10.0.0.2"))
    .collect();
    assert_eq!(
        statuses(&mut client, &ipv6),
        [200, 200, 200, 429],
        "one /48, one bucket"
    );
    assert_eq!(
        statuses(
            &mut client,
            &["198.51.100.1, 2001:db8:2::1, 10.0.0.2".to_owned()]
        ),
        [200],
        "another /48"
    );
    // Fewer elements than trusted hops: not through the trusted proxies;
    // all such requests share one key, whatever the single element says.
    let short: Vec<String> = (1..=4).map(|i| format!("198.51.100.{i}")).collect();
    assert_eq!(statuses(&mut client, &short), [200, 200, 200, 429]);
    println!("{:?}", metrics(&envoy));
}

#[test]
fn ipv6_clients_of_one_64_prefix_share_one_bucket() {
    // The default key: the address Envoy computed, here from
    // X-Forwarded-For behind one trusted proxy.
    let envoy = Envoy::start(
        &anonymous_gateway(Value::Null)
            .hcm_field("use_remote_address", json!(true))
            .hcm_field("xff_num_trusted_hops", json!(1)),
    );
    let mut client = Client::connect(envoy.listener_addr());
    let xff =
        |addresses: &[&str]| -> Vec<String> { addresses.iter().map(|a| (*a).to_owned()).collect() };
    assert_eq!(
        statuses(
            &mut client,
            &xff(&[
                "2001:db8:1:2::a",
                "2001:db8:1:2:ffff::1",
                "2001:db8:1:2::ab:c",
                "2001:db8:1:2::d"
            ])
        ),
        [200, 200, 200, 429],
        "four addresses of one /64 are one client"
    );
    assert_eq!(
        statuses(&mut client, &xff(&["2001:db8:1:3::a", "203.0.113.7"])),
        [200, 200],
        "another /64, and an IPv4 client, are others"
    );
    // Envoy picks the element: one in front of it changes nothing.
    assert_eq!(
        statuses(&mut client, &xff(&["198.51.100.1, 2001:db8:1:2::e"])),
        [429]
    );
}
