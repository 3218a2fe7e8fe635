//! The config file: documented examples parse, every kind of mistake is reported with its path.

use super::*;

const GOOD: &str = r#"
[daemon]
interfaces = ["eth0"]

[[service]]
name = "syslog-udp"
vip = "198.18.0.10"
port = 514
protocol = "udp"
active = "blue"
blue  = { backend = "198.18.1.2:514" }
green = { backend = "198.18.2.2:514" }

[[service]]
name = "syslog-tcp6"
vip = "2001:2:0:10::10"
port = 601
protocol = "tcp"
blue  = { backend = "[2001:2:0:1::2]:601" }
forward = "pass"
"#;

fn errors(text: &str) -> Vec<FieldError> {
    match Config::parse(text) {
        Err(ParseFailure::Invalid(e)) => e,
        other => panic!("expected validation errors, got {other:?}"),
    }
}

#[test]
fn parses_the_documented_example() {
    let c = Config::parse(GOOD).expect("valid config");
    assert_eq!(c.daemon.interfaces, vec!["eth0"]);
    assert_eq!(c.daemon.bpffs_dir, PathBuf::from(DEFAULT_BPFFS_DIR));
    assert_eq!(c.services.len(), 2);
    let s = &c.services[0];
    assert_eq!(s.port, 514);
    assert_eq!(s.protocol, Protocol::Udp);
    assert_eq!(s.green, Some("198.18.2.2:514".parse().expect("addr")));
    assert_eq!(s.forward, Forward::Redirect);
    assert_eq!(c.services[1].forward, Forward::Pass);
    assert_eq!(c.services[1].active, Color::Blue);
}

#[test]
fn reports_every_bad_field_with_its_path() {
    let text = GOOD
        .replace("port = 514", "port = 70000")
        .replace("\"198.18.2.2:514\"", "\"198.18.2.2\"")
        .replace("protocol = \"tcp\"", "protocol = \"sctp\"");
    let e = errors(&text);
    let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
    assert!(fields.contains(&"service[0].port"), "{e:?}");
    assert!(fields.contains(&"service[0].green.backend"), "{e:?}");
    assert!(fields.contains(&"service[1].protocol"), "{e:?}");
}

#[test]
fn rejects_duplicates_family_mismatch_and_missing_active_backend() {
    let text = GOOD
        .replace("name = \"syslog-tcp6\"", "name = \"syslog-udp\"")
        .replace("[2001:2:0:1::2]:601", "198.18.1.9:601")
        .replace(
            "active = \"blue\"",
            "active = \"green\"\nudp_affinity_idle_ms = 5",
        )
        .replace("green = { backend = \"198.18.2.2:514\" }", "");
    let e = errors(&text);
    let msg = e
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        msg.contains("service[1].name: \"syslog-udp\" already used"),
        "{msg}"
    );
    assert!(
        msg.contains("service[1].blue.backend") && msg.contains("address family"),
        "{msg}"
    );
    assert!(
        msg.contains("service[0].active: green has no backend"),
        "{msg}"
    );
}

#[test]
fn rejects_shared_backend_and_duplicate_service_key() {
    let text = format!(
        "{GOOD}\n[[service]]\nname = \"dup\"\nvip = \"198.18.0.10\"\nport = 514\nprotocol = \"udp\"\nblue = {{ backend = \"198.18.1.2:514\" }}\n"
    );
    let e = errors(&text);
    let msg = e
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        msg.contains("service[2].vip: 198.18.0.10:514/udp is already service[0]"),
        "{msg}"
    );
    assert!(
        msg.contains("already the backend of service \"syslog-udp\""),
        "{msg}"
    );
}

#[test]
fn unknown_keys_and_syntax_errors_are_rejected() {
    let text = GOOD.replace(
        "interfaces = [\"eth0\"]",
        "interfaces = [\"eth0\"]\ninterface = 1",
    );
    match Config::parse(&text) {
        Err(ParseFailure::Syntax(m)) => assert!(m.contains("interface"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        Config::parse("[daemon"),
        Err(ParseFailure::Syntax(_))
    ));
}

#[test]
fn http_listener_defaults_to_localhost_and_rejects_bad_addresses() {
    let c = Config::parse(GOOD).expect("good config");
    assert_eq!(c.http.listen, DEFAULT_HTTP_LISTEN.parse().ok());
    assert_eq!(c.http.token_file, None);
    assert_eq!(c.daemon.probe_interval, Some(Duration::from_secs(1)));
    let quiet = GOOD.replace("[daemon]", "[daemon]\nprobe_interval_ms = 0");
    assert_eq!(
        Config::parse(&quiet)
            .expect("probes off")
            .daemon
            .probe_interval,
        None
    );
    let e = errors(&GOOD.replace("[daemon]", "[daemon]\nprobe_interval_ms = 5"));
    assert!(
        e.iter().any(|e| e.field == "daemon.probe_interval_ms"),
        "{e:?}"
    );
    let off = GOOD.replace("[daemon]", "[http]\nenabled = false\n\n[daemon]");
    assert_eq!(Config::parse(&off).expect("http off").http.listen, None);
    let bad = GOOD.replace(
        "[daemon]",
        "[http]\nlisten = \"localhost\"\ntoken_file = \"relative\"\n\n[daemon]",
    );
    let e = errors(&bad);
    assert!(e.iter().any(|e| e.field == "http.listen"), "{e:?}");
    assert!(e.iter().any(|e| e.field == "http.token_file"), "{e:?}");
}

#[test]
fn shipped_example_config_is_valid() {
    let c = Config::parse(include_str!("../../dist/switcher.toml")).expect("dist/switcher.toml");
    assert_eq!(c.http.listen, "127.0.0.1:9477".parse().ok());
    let tcp = c.service("syslog-tcp").expect("tcp service");
    let load = tcp.checks.load.as_ref().expect("load");
    assert!(load.run.ack);
    assert_eq!(load.max_p99_ratio, Some(1.5));
    assert_eq!(tcp.checks.canary.as_ref().map(|c| c.percent), Some(10.0));
    assert_eq!(tcp.checks.metrics.as_ref().map(|m| m.rules.len()), Some(1));
    assert_eq!(
        c.service("syslog-udp")
            .and_then(|s| s.checks.health.as_ref())
            .and_then(|h| h.tcp_port),
        Some(601)
    );
}

#[test]
fn check_settings_are_validated_with_their_path() {
    let text = GOOD.replace(
        "forward = \"pass\"",
        "forward = \"pass\"\n[service.load]\nprotocol = \"udp\"\nack = true\nmax_p99_ratio = -1\n[service.canary]\npercent = 80\nduration_ms = 1\n[service.metrics]\nurl = \"https://x/metrics\"",
    );
    let e = errors(&text);
    let msg = e
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    for want in [
        "service[1].load.ack: acknowledgements need tcp",
        "service[1].load.max_p99_ratio",
        "service[1].canary.percent",
        "service[1].metrics.url",
        "service[1].metrics.check",
    ] {
        assert!(msg.contains(want), "missing {want}:\n{msg}");
    }
    // A udp service without a health section gets no default health check.
    let c = Config::parse(GOOD).expect("valid");
    assert!(c.services[0].checks.health.is_none());
    assert_eq!(
        c.services[1]
            .checks
            .health
            .as_ref()
            .map(|h| h.rounds.successes),
        Some(3)
    );
}

#[test]
fn tcp_service_rejects_udp_affinity() {
    let text = GOOD.replace("forward = \"pass\"", "udp_affinity_idle_ms = 1000");
    let e = errors(&text);
    assert_eq!(e[0].field, "service[1].udp_affinity_idle_ms");
}
