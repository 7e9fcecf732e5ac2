//! The harness's mutual TLS support: Envoy serving a TLS listener with the
//! test PKI's server certificate, verifying client certificates against the
//! test CA. Groundwork for the auth stage reading the peer certificate's
//! identity; no ctxgate module runs here, the route is a direct response.
//!
//! Rejections are asserted as errors on the client (never a hang: every
//! socket operation has a timeout) and, for the reason, on Envoy's listener
//! TLS stats.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use ctxgate_e2e::{Envoy, EnvoyConfig, Request, Route, TestPki, TlsClient, eventually};

const INGEST: &str = "spiffe://cluster.local/ns/ctx/sa/ingest";
/// Listener stats are named after the configured address, port 0.
const SSL_STATS: &str = "listener.127.0.0.1_0.ssl.";
/// A rejected handshake must fail well within this (not hang until the
/// client's timeout).
const TIMEOUT: Duration = Duration::from_secs(5);
/// What Envoy saw of the peer certificate, one access log line a request.
const PEER_LOG: &str =
    "peer uri=%DOWNSTREAM_PEER_URI_SAN% subject=%DOWNSTREAM_PEER_SUBJECT% path=%REQ(:PATH)%\n";

/// Waits for the access log line of the request to `path`.
#[track_caller]
fn peer_line(envoy: &Envoy, path: &str) -> String {
    let suffix = format!(" path={path}");
    let mut line = None;
    eventually(Duration::from_secs(5), || {
        line = envoy
            .stdout()
            .lines()
            .find(|l| l.starts_with("peer ") && l.ends_with(&suffix))
            .map(str::to_owned);
        line.is_some()
    });
    line.unwrap_or_else(|| panic!("no access log line for {path}:\n{}", envoy.stdout()))
}

fn tls_envoy(pki: &TestPki, require_client_certificate: bool) -> Envoy {
    Envoy::start(
        &EnvoyConfig::new()
            .concurrency(2)
            .downstream_tls(pki, require_client_certificate)
            .access_log(PEER_LOG)
            .route(Route::prefix("/").direct(200, "tls ok")),
    )
}

fn get(envoy: &Envoy, client: &TlsClient) -> std::io::Result<ctxgate_e2e::Response> {
    get_path(envoy, "/whoami", client)
}

fn get_path(
    envoy: &Envoy,
    path: &str,
    client: &TlsClient,
) -> std::io::Result<ctxgate_e2e::Response> {
    Request::get(path)
        .timeout(TIMEOUT)
        .try_send_tls(envoy.listener_addr(), client)
}

/// Sends over TLS, expecting the connection to fail; returns the error text.
#[track_caller]
fn expect_rejected(envoy: &Envoy, client: &TlsClient) -> String {
    let started = Instant::now();
    let err = match get(envoy, client) {
        Ok(resp) => panic!(
            "expected a TLS failure, got status {} body {:?}",
            resp.status,
            resp.text()
        ),
        Err(err) => err,
    };
    assert!(
        started.elapsed() < TIMEOUT,
        "the rejection took {:?}: it timed out instead of failing ({err})",
        started.elapsed()
    );
    err.to_string()
}

#[test]
fn required_client_certificate_is_verified_against_the_test_ca() {
    let pki = TestPki::new();
    let envoy = tls_envoy(&pki, true);

    // A certificate from the test CA, with a SPIFFE URI SAN: in.
    let ingest = pki.client("ingest", Some(INGEST), "ingest");
    let resp = get_path(&envoy, "/ingest", &pki.tls_client().cert(&ingest)).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "tls ok");
    // Envoy sees the identity the next issue's auth stage will read: the
    // URI SAN, and the subject in RFC 2253 form (last RDN first).
    assert_eq!(
        peer_line(&envoy, "/ingest"),
        format!("peer uri={INGEST} subject=CN=ingest,O=ctxgate e2e path=/ingest")
    );
    // The server certificate matches 127.0.0.1 as well as localhost.
    let by_ip = pki.tls_client().cert(&ingest).server_name("127.0.0.1");
    assert_eq!(get(&envoy, &by_ip).unwrap().status, 200);
    // A certificate without a URI SAN is as good for TLS.
    let plain = pki.client("plain", None, "plain");
    let resp = get_path(&envoy, "/plain", &pki.tls_client().cert(&plain)).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(
        peer_line(&envoy, "/plain"),
        "peer uri=- subject=CN=plain,O=ctxgate e2e path=/plain"
    );
    assert_eq!(envoy.counter(&format!("{SSL_STATS}handshake")), 3);

    // No client certificate: the handshake fails.
    let err = expect_rejected(&envoy, &pki.tls_client());
    assert!(err.contains("CertificateRequired"), "{err}");
    assert_eq!(
        envoy.wait_for_counter(&format!("{SSL_STATS}fail_verify_no_cert"), 1),
        1
    );

    // A certificate from a CA Envoy does not trust: the handshake fails.
    let stranger = pki.untrusted_client("stranger", Some(INGEST), "ingest");
    let err = expect_rejected(&envoy, &pki.tls_client().cert(&stranger));
    assert!(err.contains("UnknownCA"), "{err}");
    assert_eq!(
        envoy.wait_for_counter(&format!("{SSL_STATS}fail_verify_error"), 1),
        1
    );

    // The client verifies the server too: trusting only the other CA fails.
    let wrong_trust = TlsClient::new(&pki.untrusted_ca_pem()).cert(&ingest);
    let err = expect_rejected(&envoy, &wrong_trust);
    assert!(err.contains("UnknownIssuer"), "{err}");

    assert_eq!(envoy.counter(&format!("{SSL_STATS}handshake")), 3);
}

#[test]
fn optional_client_certificate_lets_a_client_without_one_in() {
    let pki = TestPki::new();
    let envoy = tls_envoy(&pki, false);

    let resp = get_path(&envoy, "/anonymous", &pki.tls_client()).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "tls ok");
    assert_eq!(
        peer_line(&envoy, "/anonymous"),
        "peer uri=- subject=- path=/anonymous"
    );
    // A good certificate is still accepted...
    let ingest = pki.client("ingest", Some(INGEST), "ingest");
    assert_eq!(
        get(&envoy, &pki.tls_client().cert(&ingest)).unwrap().status,
        200
    );
    assert_eq!(envoy.counter(&format!("{SSL_STATS}handshake")), 2);
    // ...and one that is presented is still verified.
    let stranger = pki.untrusted_client("stranger", None, "stranger");
    let err = expect_rejected(&envoy, &pki.tls_client().cert(&stranger));
    assert!(err.contains("UnknownCA"), "{err}");
    assert_eq!(
        envoy.wait_for_counter(&format!("{SSL_STATS}fail_verify_error"), 1),
        1
    );

    // Plain HTTP on the TLS listener fails too, promptly.
    let started = Instant::now();
    let result = Request::get("/")
        .timeout(TIMEOUT)
        .try_send(envoy.listener_addr());
    assert!(result.is_err(), "plain HTTP got {result:?}");
    assert!(started.elapsed() < TIMEOUT, "plain HTTP hung: {result:?}");
}
