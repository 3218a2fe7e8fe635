//! Observability in the lab with real traffic: `/metrics` parsed by a real OpenMetrics parser
//! moves with traffic, flips, health and deployments; the dashboard's actions need the token;
//! and headless Chromium shows the live dashboard (see dashboard_browser.rs). Needs root.

mod support;

use std::time::{Duration, Instant};

use support::{metrics, privileged};
use switcher::{api::Request, domain::Color};
use switcher_tests::{
    lab::{Host, BLUE_V4},
    rig::{self, Rig, TCP_PORT, UDP_PORT},
};

fn scrape(rig: &Rig) -> metrics::Scrape {
    let text = rig.metrics().expect("GET /metrics");
    metrics::parse(&text).expect("parse /metrics")
}

/// Scrapes until `ok` holds (or panics after `timeout` with `what`).
fn scrape_until(
    rig: &Rig,
    timeout: Duration,
    what: &str,
    ok: impl Fn(&metrics::Scrape) -> bool,
) -> metrics::Scrape {
    let deadline = Instant::now() + timeout;
    loop {
        let s = scrape(rig);
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn send(rig: &Rig, proto: &str, stream: &str, count: u64, rate: u64) -> switcher_tests::lab::Proc {
    rig.stream(proto, stream, count, rate).expect("sender")
}

fn finish(p: &switcher_tests::lab::Proc, count: u64) {
    let sent = rig::finish_sender(p, Duration::from_secs(70)).expect("sender");
    assert_eq!(sent, count);
}

const UDP4_BLUE: [(&str, &str); 2] = [("service", "udp4"), ("color", "blue")];
const UDP4_GREEN: [(&str, &str); 2] = [("service", "udp4"), ("color", "green")];
const TCP4_BLUE: [(&str, &str); 2] = [("service", "tcp4"), ("color", "blue")];
const TCP4_GREEN: [(&str, &str); 2] = [("service", "tcp4"), ("color", "green")];

/// The labels of the one member of a lab pool: (service, color, backend).
fn member<'a>(service: &'a str, color: &'a str, backend: &'a str) -> [(&'a str, &'a str); 3] {
    [("service", service), ("color", color), ("backend", backend)]
}

#[test]
fn metrics_follow_traffic_flips_health_and_deployments() {
    if !privileged() {
        return;
    }
    let rig = Rig::up(
        "ob",
        &rig::standard_services("redirect", switcher_tests::services::STANDARD_CHECKS),
    )
    .expect("rig");

    // Types and units as Prometheus expects them.
    let s0 = scrape(&rig);
    // The XDP mode the kernel reports for the edge's veth (native: veth has the driver hook).
    let xdp = |mode| {
        s0.value(
            "switcher_xdp_attached",
            &[("interface", rig::EDGE_TO_CLIENT), ("mode", mode)],
        )
    };
    assert_eq!(
        (xdp("native"), xdp("generic"), xdp("none")),
        (1.0, 0.0, 0.0)
    );
    assert_eq!(s0.kind("switcher_service_packets"), Some("counter"));
    assert_eq!(s0.kind("switcher_service_bytes"), Some("counter"));
    assert_eq!(s0.kind("switcher_pinned_flows"), Some("gauge"));
    for (family, kind) in [
        ("switcher_member_packets", "counter"),
        ("switcher_member_bytes", "counter"),
        ("switcher_member_new_flows", "counter"),
        ("switcher_member_pinned_flows", "gauge"),
        ("switcher_member_share", "gauge"),
    ] {
        assert_eq!(s0.kind(family), Some(kind), "{family}");
    }
    // Per member: the lab's pools of one, each with its colour's whole share.
    let udp_blue = std::net::SocketAddr::new(BLUE_V4.into(), UDP_PORT).to_string();
    let tcp_blue = std::net::SocketAddr::new(BLUE_V4.into(), TCP_PORT).to_string();
    let udp4_blue_member = member("udp4", "blue", &udp_blue);
    let tcp4_blue_member = member("tcp4", "blue", &tcp_blue);
    assert_eq!(
        s0.get("switcher_member_share", &udp4_blue_member),
        Some(1.0)
    );
    assert_eq!(
        s0.kind("switcher_flip_api_latency_seconds"),
        Some("histogram")
    );
    assert_eq!(s0.get("switcher_active_color", &UDP4_BLUE), Some(1.0));
    assert_eq!(s0.get("switcher_active_color", &UDP4_GREEN), Some(0.0));
    assert_eq!(
        s0.get(
            "switcher_deployment_phase",
            &[("service", "udp4"), ("phase", "none")]
        ),
        Some(1.0)
    );

    // Traffic moves the per-colour counters, read from the per-CPU maps at scrape time.
    let udp = send(&rig, "udp", "m1", 400, 2000);
    // A long-lived TCP connection: 20 lines/s for 15 s, pinned to blue.
    let tcp = send(&rig, "tcp", "t1", 300, 20);
    finish(&udp, 400);
    let s1 = scrape_until(&rig, Duration::from_secs(5), "udp4 blue counters", |s| {
        s.value("switcher_service_packets_total", &UDP4_BLUE)
            - s0.value("switcher_service_packets_total", &UDP4_BLUE)
            >= 400.0
    });
    assert!(
        s1.value("switcher_service_bytes_total", &UDP4_BLUE)
            - s0.value("switcher_service_bytes_total", &UDP4_BLUE)
            >= 400.0 * 60.0,
        "bytes follow packets"
    );
    assert_eq!(s1.value("switcher_service_packets_total", &UDP4_GREEN), 0.0);
    assert!(
        s1.value("switcher_member_packets_total", &udp4_blue_member)
            - s0.value("switcher_member_packets_total", &udp4_blue_member)
            >= 400.0,
        "the member's counters follow its colour's"
    );
    assert!(
        s1.value("switcher_member_bytes_total", &udp4_blue_member)
            - s0.value("switcher_member_bytes_total", &udp4_blue_member)
            >= 400.0 * 60.0
    );
    // Pinned flows come from a walk of the flow table shared for CENSUS_MAX_AGE (5 s).
    scrape_until(
        &rig,
        Duration::from_secs(8),
        "the TCP connection pinned to blue",
        |s| {
            s.value("switcher_pinned_flows", &TCP4_BLUE) >= 1.0
                && s.value("switcher_member_pinned_flows", &tcp4_blue_member) >= 1.0
        },
    );
    assert!(
        s1.value(
            "switcher_datapath_packets_total",
            &[("reason", "redirected")]
        ) >= 400.0
    );

    // A flip through the CLI: colour, generation, flip counters, latency, flip time.
    let before_flip = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let flip_started = Instant::now();
    for service in ["udp4", "tcp4"] {
        let out = std::process::Command::new(rig::bin("switcher").expect("switcher binary"))
            .arg("--socket")
            .arg(&rig.socket)
            .args(["flip", service, "--to", "green"])
            .output()
            .expect("switcher flip");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let flipped = Instant::now();
    let s2 = scrape(&rig);
    assert_eq!(s2.get("switcher_active_color", &UDP4_GREEN), Some(1.0));
    assert_eq!(
        s2.value("switcher_generation", &[("service", "udp4")]),
        s1.value("switcher_generation", &[("service", "udp4")]) + 1.0
    );
    assert_eq!(
        s2.value(
            "switcher_flips_total",
            &[("service", "udp4"), ("to", "green")]
        ),
        1.0
    );
    assert!(s2.value("switcher_flip_api_latency_seconds_count", &[]) >= 2.0);
    let flipped_at = s2
        .get(
            "switcher_last_flip_timestamp_seconds",
            &[("service", "udp4")],
        )
        .expect("last flip time");
    assert!(
        (flipped_at - before_flip).abs() < 5.0,
        "flip time {flipped_at} is near {before_flip}"
    );
    // The open TCP connection keeps draining on blue; new UDP lines go to green, and the
    // kernel records how long after the flip the first one came.
    assert!(
        s2.value("switcher_pinned_flows", &TCP4_BLUE) >= 1.0,
        "blue drains"
    );
    assert_eq!(s2.value("switcher_pinned_flows", &TCP4_GREEN), 0.0);
    assert!(
        s2.value("switcher_member_pinned_flows", &tcp4_blue_member) >= 1.0,
        "the connection stays on its member"
    );
    // No udp4 line was sent since the flip: the first one to reach green is m2's first.
    let sending = Instant::now();
    let udp = send(&rig, "udp", "m2", 200, 2000);
    finish(&udp, 200);
    let s3 = scrape_until(&rig, Duration::from_secs(5), "udp4 green counters", |s| {
        s.value("switcher_service_packets_total", &UDP4_GREEN) >= 200.0
    });
    let seen = Instant::now();
    let cutover = s3
        .get("switcher_last_flip_cutover_seconds", &[("service", "udp4")])
        .expect("cutover time after traffic reached green");
    // The map write happened before `flipped` and the first packet after `sending`, and both
    // before `seen`: the kernel's cutover lies between what this test's clock allows.
    let low = sending.duration_since(flipped).as_secs_f64();
    let high = seen.duration_since(flip_started).as_secs_f64();
    assert!(
        (low..=high).contains(&cutover),
        "cutover {cutover} s outside [{low}, {high}]"
    );
    finish(&tcp, 300);

    // Health of every backend, and a failing one shows within a few probe rounds.
    assert_eq!(
        s3.get("switcher_backend_up", &UDP4_BLUE),
        Some(1.0),
        "blue healthy"
    );
    assert!(s3
        .get("switcher_backend_probe_duration_seconds", &UDP4_BLUE)
        .is_some());
    // In service comes from the health monitor's probes, so it is checked once they ran.
    assert_eq!(s3.kind("switcher_member_in_service"), Some("gauge"));
    assert_eq!(
        s3.get("switcher_member_in_service", &udp4_blue_member),
        Some(1.0)
    );
    rig.fault(Host::Blue, r#"{"health_ok": false}"#)
        .expect("fault");
    let down = scrape_until(&rig, Duration::from_secs(5), "blue reported down", |s| {
        s.get("switcher_backend_up", &UDP4_BLUE) == Some(0.0)
            && s.value(
                "switcher_backend_probes_total",
                &[("service", "udp4"), ("color", "blue"), ("result", "failed")],
            ) >= 1.0
            && s.get("switcher_member_in_service", &udp4_blue_member) == Some(0.0)
    });
    // Out of service, but the only member: it keeps its share (the switch never stops a
    // service's traffic by itself).
    assert_eq!(
        down.get("switcher_member_share", &udp4_blue_member),
        Some(1.0)
    );
    rig.fault(Host::Blue, r#"{"health_ok": true}"#)
        .expect("fault");
    scrape_until(&rig, Duration::from_secs(5), "blue back in service", |s| {
        s.get("switcher_member_in_service", &udp4_blue_member) == Some(1.0)
    });

    // A deployment: validation result, phase, then a rollback through the dashboard's API.
    rig.call(&Request::Deploy {
        service: "udp4".into(),
        color: Color::Blue,
        members: vec![switcher::config::Member::new(std::net::SocketAddr::new(
            switcher_tests::lab::BLUE_V4.into(),
            UDP_PORT,
        ))],
        version: Some("v2".into()),
        force: false,
    })
    .expect("deploy");
    let s4 = scrape(&rig);
    assert_eq!(
        s4.get(
            "switcher_deployment_phase",
            &[("service", "udp4"), ("phase", "deployed")]
        ),
        Some(1.0)
    );
    rig.call(&Request::Promote {
        service: "udp4".into(),
        wait: true,
    })
    .expect("promote");
    let s5 = scrape(&rig);
    assert_eq!(
        s5.value(
            "switcher_validations_total",
            &[("service", "udp4"), ("result", "passed")]
        ),
        1.0
    );
    assert_eq!(
        s5.get("switcher_last_validation_passed", &[("service", "udp4")]),
        Some(1.0)
    );
    assert_eq!(s5.get("switcher_active_color", &UDP4_BLUE), Some(1.0));

    let url = rig.web_url("/api/services/udp4/rollback");
    let (status, body) = rig.http("POST", &url, None, Some("{}")).expect("post");
    assert_eq!(status, 401, "rollback without a token is refused: {body}");
    let (status, body) = rig
        .http("POST", &url, Some("not-the-token-000000"), Some("{}"))
        .expect("post");
    assert_eq!(
        status, 401,
        "rollback with a wrong token is refused: {body}"
    );
    assert_eq!(
        scrape(&rig).get("switcher_active_color", &UDP4_BLUE),
        Some(1.0)
    );
    let token = rig.web_token().expect("token");
    let (status, body) = rig
        .http("POST", &url, Some(&token), Some("{}"))
        .expect("post");
    assert_eq!(status, 200, "rollback with the token: {body}");
    let s6 = scrape(&rig);
    assert_eq!(s6.get("switcher_active_color", &UDP4_GREEN), Some(1.0));
    assert_eq!(
        s6.value(
            "switcher_rollbacks_total",
            &[("service", "udp4"), ("trigger", "manual")]
        ),
        1.0
    );
    assert_eq!(
        s6.get(
            "switcher_deployment_phase",
            &[("service", "udp4"), ("phase", "none")]
        ),
        Some(1.0),
        "the rolled-back deployment is archived"
    );
}

/// One raw HTTP/1.1 exchange with the daemon's listener from the edge host, with exactly the
/// headers given: (status, head, body). Written by hand so the Host header is ours.
fn raw_http(rig: &Rig, request: String) -> (u16, String, String) {
    use std::io::{Read as _, Write as _};
    let addr = switcher_tests::services::WEB_LISTEN.to_string();
    switcher_tests::lab::in_netns(rig.lab.ns(Host::Edge), move || {
        let mut s = std::net::TcpStream::connect(&addr).expect("connect to the listener");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(request.as_bytes()).expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, head.to_string(), body.to_string())
    })
    .expect("edge namespace")
}

fn post(path: &str, host: &str, token: Option<&str>, body: &str) -> String {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The HTTP listener protects itself and the datapath: a loopback listener refuses other Host
/// names (DNS rebinding), every page carries the CSP, promote and flip need the token like
/// rollback does, and a port already taken does not keep the daemon from serving its API.
#[test]
fn the_http_listener_refuses_foreign_hosts_and_unauthorised_actions() {
    if !privileged() {
        return;
    }
    let mut rig = Rig::up(
        "hg",
        &rig::standard_services("redirect", switcher_tests::services::STANDARD_CHECKS),
    )
    .expect("rig");
    let get = |host: &str| format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let (status, _, body) = raw_http(&rig, get("evil.example:9477"));
    assert_eq!(status, 403, "a foreign Host is refused: {body}");
    let (status, head, body) = raw_http(&rig, get("127.0.0.1:9477"));
    assert_eq!(status, 200, "{head}");
    assert!(
        body.contains("<html") || body.contains("<!doctype"),
        "{body}"
    );
    let csp = head
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("content-security-policy:")
        })
        .unwrap_or_else(|| panic!("no CSP header: {head}"));
    assert!(csp.contains("default-src 'self'"), "{csp}");
    // No other page may frame the dashboard and its buttons (clickjacking).
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let (status, head, _) = raw_http(&rig, get("localhost"));
    assert_eq!(status, 200, "localhost is a loopback name: {head}");

    // Promote and flip need the token, like rollback (tested above).
    rig.call(&Request::Deploy {
        service: "udp4".into(),
        color: Color::Green,
        members: vec![switcher::config::Member::new(std::net::SocketAddr::new(
            switcher_tests::lab::GREEN_V4.into(),
            UDP_PORT,
        ))],
        version: Some("v2".into()),
        force: false,
    })
    .expect("deploy");
    let token = rig.web_token().expect("token");
    let host = "127.0.0.1:9477";
    let phase = |rig: &Rig| {
        rig.status().expect("status").services[0]
            .deployment
            .as_ref()
            .map(|d| d.phase)
    };
    for (path, body) in [
        ("/api/services/udp4/promote", "{}"),
        (
            "/api/services/udp4/flip",
            r#"{"to": "green", "force": true, "reason": "test"}"#,
        ),
    ] {
        for bad in [None, Some("not-the-token-000000")] {
            let (status, _, text) = raw_http(&rig, post(path, host, bad, body));
            assert_eq!(status, 401, "{path} with {bad:?}: {text}");
        }
        // A foreign Host is refused even with the token.
        let (status, _, _) = raw_http(&rig, post(path, "evil.example", Some(&token), body));
        assert_eq!(status, 403, "{path} from a foreign host");
    }
    assert_eq!(
        phase(&rig),
        Some(switcher::deploy::Phase::Deployed),
        "nothing refused changed anything"
    );
    assert_eq!(
        rig.status().expect("status").services[0].active,
        Color::Blue
    );
    let (status, _, text) = raw_http(
        &rig,
        post("/api/services/udp4/promote", host, Some(&token), "{}"),
    );
    assert_eq!(status, 200, "promote with the token: {text}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while rig.status().expect("status").services[0].active != Color::Green {
        assert!(Instant::now() < deadline, "promotion never flipped");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, _, text) = raw_http(
        &rig,
        post(
            "/api/services/udp4/flip",
            host,
            Some(&token),
            r#"{"to": "blue"}"#,
        ),
    );
    assert_eq!(status, 200, "flip with the token: {text}");
    assert_eq!(
        rig.status().expect("status").services[0].active,
        Color::Blue
    );

    // A port taken by someone else: the daemon logs it and serves its API anyway.
    rig.stop_daemon().expect("stop");
    let squatter = switcher_tests::lab::in_netns(rig.lab.ns(Host::Edge), || {
        std::net::TcpListener::bind(switcher_tests::services::WEB_LISTEN)
    })
    .expect("edge namespace")
    .expect("take the port");
    rig.start_daemon()
        .expect("the daemon starts without its HTTP listener");
    assert_eq!(rig.status().expect("status").services.len(), 4);
    let log = rig.daemon().expect("daemon").stderr_lines().join("\n");
    assert!(
        log.contains("metrics and dashboard are not served"),
        "{log}"
    );
    drop(squatter);
}

/// `/healthz` answers for the daemon itself; `switcher_config_last_reload_successful` follows
/// a refused and an applied reload; the flow tables' capacities are exported.
#[test]
fn health_endpoint_and_reload_outcome_are_exported() {
    if !privileged() {
        return;
    }
    let services = rig::standard_services("redirect", "");
    let rig = Rig::up("hz", &services).expect("rig");
    let (status, body) = rig
        .http("GET", &rig.web_url("/healthz"), None, None)
        .expect("GET /healthz");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        (v["status"].as_str(), v["services"].as_u64()),
        (Some("ok"), Some(4))
    );

    let s = scrape(&rig);
    assert_eq!(s.value("switcher_config_last_reload_successful", &[]), 1.0);
    assert_eq!(
        s.value("switcher_flow_table_capacity", &[("table", "established")]),
        f64::from(switcher_common::FLOW_TABLE_SIZE)
    );
    let applied = s.value("switcher_config_last_reload_success_timestamp_seconds", &[]);
    assert!(applied > 1.7e9, "a Unix time: {applied}");

    // A broken file: the reload is refused, the metric says so, the daemon stays healthy.
    rig.set_services("[[service]]\nname = 5\n")
        .expect("write config");
    let e = rig
        .call(&Request::Reload)
        .expect_err("invalid config refused");
    assert!(e.to_string().contains("name = 5"), "{e:#}");
    assert_eq!(
        scrape(&rig).value("switcher_config_last_reload_successful", &[]),
        0.0
    );
    let (status, _) = rig
        .http("GET", &rig.web_url("/healthz"), None, None)
        .expect("GET /healthz");
    assert_eq!(status, 200);
    // Fixed: applied again.
    rig.set_services(&services).expect("write config");
    rig.call(&Request::Reload).expect("valid config applies");
    let s = scrape(&rig);
    assert_eq!(s.value("switcher_config_last_reload_successful", &[]), 1.0);
    assert!(s.value("switcher_config_last_reload_success_timestamp_seconds", &[]) >= applied);
}
