//! The config file: documented examples parse, every kind of mistake is reported with its path.

use super::*;
use crate::probe::load::LoadProtocol;

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
    assert_eq!(
        s.green,
        [Member::new("198.18.2.2:514".parse().expect("addr"))]
    );
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
fn pools_are_lists_of_backends_with_optional_weights() {
    let text = GOOD.replace(
        "green = { backend = \"198.18.2.2:514\" }",
        "green = { backends = [\"198.18.2.2:514\", \"198.18.2.3:514\"], weights = [3, 1] }",
    );
    let c = Config::parse(&text).expect("valid");
    let g = &c.services[0].green;
    assert_eq!(g.len(), 2);
    assert_eq!((g[0].weight, g[1].weight), (3, 1));
    assert_eq!(c.services[0].blue.len(), 1, "backend = is a pool of one");
    assert_eq!(
        c.services[0].checks.watch.min_healthy_share,
        DEFAULT_MIN_HEALTHY_SHARE
    );

    let cases = [
        (
            "green = { backends = [\"198.18.2.2:514\", \"198.18.2.2:514\"] }",
            "service[0].green.backends[1]: 198.18.2.2:514 is listed twice",
        ),
        (
            "green = { backend = \"198.18.2.2:514\", backends = [\"198.18.2.3:514\"] }",
            "service[0].green: backend or backends, not both",
        ),
        (
            "green = { }",
            "service[0].green: backend = \"ADDR:PORT\" or backends",
        ),
        (
            "green = { backends = [\"198.18.2.2:514\"], weights = [1, 2] }",
            "service[0].green.weights: 2 weights for 1 backends",
        ),
        (
            "green = { backends = [\"198.18.2.2:514\"], weights = [0] }",
            "service[0].green.weights[0]: weight 0 is out of range",
        ),
        (
            "green = { backend = \"198.18.2.2:514\", weights = [1] }",
            "service[0].green.weights: only with backends",
        ),
        (
            "green = { backends = [\"198.18.2.2:514\", \"[2001:2::2]:514\"] }",
            "service[0].green.backends[1]: [2001:2::2]:514 is not the same address family",
        ),
        (
            "green = { backends = [] }",
            "service[0].green.backends: a pool needs at least one member",
        ),
    ];
    for (green, want) in cases {
        let text = GOOD.replace("green = { backend = \"198.18.2.2:514\" }", green);
        let msg = errors(&text)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(msg.contains(want), "{green}: {msg}");
    }
    let many: Vec<String> = (0..65)
        .map(|i| format!("\"198.18.2.{}:514\"", i + 2))
        .collect();
    let text = GOOD.replace(
        "green = { backend = \"198.18.2.2:514\" }",
        &format!("green = {{ backends = [{}] }}", many.join(", ")),
    );
    let msg = errors(&text)[0].to_string();
    assert!(msg.contains("65 members, at most 64"), "{msg}");
    // A member another service uses is named by its position in the pool.
    let text = format!(
        "{GOOD}\n[[service]]\nname = \"other\"\nvip = \"198.18.0.11\"\nport = 514\nprotocol = \"udp\"\nblue = {{ backends = [\"198.18.3.1:514\", \"198.18.2.2:514\"] }}\n"
    );
    let msg = errors(&text)[0].to_string();
    assert!(
        msg.contains("service[2].blue.backends[1]: 198.18.2.2:514/udp is already the backend of service \"syslog-udp\""),
        "{msg}"
    );
    let text = GOOD.replace(
        "green = { backend = \"198.18.2.2:514\" }",
        "green = { backend = \"198.18.2.2:514\" }\n[service.watch]\nmin_healthy_share = 1.5",
    );
    let msg = errors(&text)[0].to_string();
    assert!(
        msg.contains("service[0].watch.min_healthy_share: must be in [0, 1]"),
        "{msg}"
    );
}

#[test]
fn udp_affinity_has_a_maximum_age_only_with_affinity() {
    let c = Config::parse(GOOD).expect("valid");
    assert_eq!(
        c.services[0].udp_affinity_max_age,
        Duration::from_millis(DEFAULT_UDP_AFFINITY_MAX_AGE_MS)
    );
    let with = GOOD.replace(
        "active = \"blue\"",
        "active = \"blue\"\nudp_affinity_idle_ms = 5000\nudp_affinity_max_age_ms = 60000",
    );
    let c = Config::parse(&with).expect("valid");
    assert_eq!(c.services[0].udp_affinity_max_age, Duration::from_secs(60));
    let without = GOOD.replace(
        "active = \"blue\"",
        "active = \"blue\"\nudp_affinity_max_age_ms = 60000",
    );
    let msg = errors(&without)[0].to_string();
    assert!(
        msg.contains("service[0].udp_affinity_max_age_ms: only with udp_affinity_idle_ms"),
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
    // Only what a stock rsyslog answers: RELP for the load, TCP connects for health.
    assert_eq!(
        (load.run.protocol, load.port),
        (LoadProtocol::Relp, Some(2514))
    );
    assert_eq!(load.max_p99_ratio, Some(1.5));
    assert_eq!(tcp.checks.canary.as_ref().map(|c| c.percent), Some(10.0));
    assert!(tcp.checks.metrics.is_none());
    assert_eq!(
        tcp.checks.health.as_ref().and_then(|h| h.tcp_port),
        Some(601)
    );
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
        "forward = \"pass\"\n[service.load]\nprotocol = \"udp\"\nack = \"line\"\nmax_p99_ratio = -1\n[service.canary]\npercent = 80\nduration_ms = 1\n[service.metrics]\nurl = \"https://x/metrics\"",
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

#[test]
fn gelf_chunks_are_kept_whole_on_udp_unless_turned_off() {
    let c = Config::parse(GOOD).expect("valid config");
    assert!(c.services[0].gelf, "on by default for udp");
    assert!(!c.services[1].gelf, "never on tcp");
    let off = GOOD.replacen("active = \"blue\"", "active = \"blue\"\ngelf = false", 1);
    assert!(!Config::parse(&off).expect("valid config").services[0].gelf);
    let e = errors(&with_tcp_extra("gelf = true"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].field, "service[1].gelf");
    assert!(e[0].reason.contains("only for udp"), "{}", e[0].reason);
    // `gelf = false` on tcp says what is true anyway: accepted.
    assert!(
        !Config::parse(&with_tcp_extra("gelf = false"))
            .expect("valid config")
            .services[1]
            .gelf
    );
}

#[test]
fn load_speaks_relp_or_acknowledged_lines_and_the_old_ack_spelling_is_named() {
    let load = |body: &str| with_tcp_extra(&format!("[service.load]\n{body}"));
    let c = Config::parse(&load("protocol = \"relp\"\nport = 2514")).expect("relp");
    let run = &c.services[1].checks.load.as_ref().expect("load").run;
    assert_eq!(run.protocol, LoadProtocol::Relp);
    assert!(
        !run.ack && run.acknowledged(),
        "relp acknowledges by itself"
    );
    let c = Config::parse(&load("ack = \"line\"")).expect("line acks");
    let run = &c.services[1].checks.load.as_ref().expect("load").run;
    assert_eq!((run.protocol, run.ack), (LoadProtocol::Tcp, true));
    for (body, want) in [
        ("ack = true", "ack = true is now ack = \"line\""),
        ("ack = false", "ack = false is now ack = \"none\""),
        ("ack = \"yes\"", "expected \"line\" or \"none\""),
        (
            "protocol = \"relp\"\nack = \"line\"",
            "relp acknowledges every message itself",
        ),
        ("protocol = \"gelf\"", "expected udp, tcp or relp"),
    ] {
        let e = errors(&load(body));
        assert_eq!(e.len(), 1, "{body}: {e:?}");
        assert!(e[0].field.starts_with("service[1].load."), "{body}: {e:?}");
        assert!(e[0].reason.contains(want), "{body}: {}", e[0].reason);
    }
}

#[test]
fn shadow_is_for_udp_to_a_port_of_its_own() {
    let udp = |body: &str| {
        GOOD.replacen(
            "green = { backend = \"198.18.2.2:514\" }",
            &format!("green = {{ backend = \"198.18.2.2:514\" }}\n[service.shadow]\n{body}"),
            1,
        )
    };
    let c = Config::parse(&udp("percent = 100\nduration_ms = 5000\nport = 5140")).expect("valid");
    let sh = c.services[0].checks.shadow.as_ref().expect("shadow");
    assert_eq!(
        (sh.percent, sh.duration, sh.port),
        (100.0, Duration::from_secs(5), 5140)
    );
    for (text, field) in [
        (
            udp("percent = 0\nduration_ms = 5000\nport = 5140"),
            "service[0].shadow.percent",
        ),
        (
            udp("percent = 10\nduration_ms = 5000\nport = 514"),
            "service[0].shadow.port",
        ),
        (
            udp("percent = 10\nduration_ms = 5000\nport = 0"),
            "service[0].shadow.port",
        ),
        (
            with_tcp_extra("[service.shadow]\npercent = 10\nduration_ms = 5000\nport = 5140"),
            "service[1].shadow",
        ),
    ] {
        let e = errors(&text);
        assert!(e.iter().any(|e| e.field == field), "{field}: {e:?}");
    }
}

/// The service section of GOOD's tcp service with `extra` appended.
fn with_tcp_extra(extra: &str) -> String {
    GOOD.replace(
        "forward = \"pass\"",
        &format!("forward = \"pass\"\n{extra}"),
    )
}

fn messages(e: &[FieldError]) -> String {
    e.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn durations_out_of_range_are_rejected_with_the_range() {
    // Every one of these either busy-loops (a zero interval), overflows the controller's
    // deadline arithmetic or a tokio Instant, or is truncated to the datapath's u64 ns.
    let text = with_tcp_extra(
        "drain_ms = 18446744073710\nwarm_ms = 9223372036854775807\n\
         [service.health]\ninterval_ms = 0\ndeadline_ms = 9223372036854775807\ntimeout_ms = 0\n\
         [service.load]\nlines = 100\ntimeout_ms = 9223372036854775807\n\
         [service.canary]\npercent = 10\nduration_ms = 9223372036854775807\n\
         [service.metrics]\nurl = \"http://{addr}/m\"\ntimeout_ms = 0\n\
         [[service.metrics.check]]\nname = \"x\"\nmax_increase = 0\n\
         [service.watch]\nwindow_ms = 9223372036854775807\ninterval_ms = 0",
    )
    .replace(
        "active = \"blue\"",
        "active = \"blue\"\nudp_affinity_idle_ms = 18446744073710",
    )
    .replace(
        "[daemon]",
        "[daemon]\nprobe_interval_ms = 9223372036854775807",
    );
    let e = errors(&text);
    let msg = messages(&e);
    for (field, range) in [
        ("daemon.probe_interval_ms", "0 (off) or 100..=3600000"),
        ("service[0].udp_affinity_idle_ms", "0..=604800000"),
        ("service[1].drain_ms", "0..=604800000"),
        ("service[1].warm_ms", "0..=604800000"),
        ("service[1].health.interval_ms", "10..=3600000"),
        ("service[1].health.deadline_ms", "1..=3600000"),
        ("service[1].health.timeout_ms", "1..=300000"),
        ("service[1].load.timeout_ms", "1..=3600000"),
        ("service[1].canary.duration_ms", "1..=3600000"),
        ("service[1].metrics.timeout_ms", "1..=300000"),
        ("service[1].watch.window_ms", "0..=604800000"),
        ("service[1].watch.interval_ms", "10..=3600000"),
    ] {
        let line = e
            .iter()
            .find(|e| e.field == field)
            .map(ToString::to_string)
            .unwrap_or_else(|| panic!("no error for {field}:\n{msg}"));
        assert!(
            line.contains(range),
            "{field} does not name {range}: {line}"
        );
    }
}

#[test]
fn load_size_and_rate_are_bounded() {
    let text = with_tcp_extra(
        "[service.load]\nlines = 1000000000000\nrate = 1000000000000\nline_size = 2000000\nconnections = 100000",
    );
    let msg = messages(&errors(&text));
    for want in [
        "service[1].load.lines: 1000000000000 is out of range: 1..=10000000",
        "service[1].load.rate: 1000000000000 is out of range: 0..=1000000",
        "service[1].load: connections must be 1..=4096",
    ] {
        assert!(msg.contains(want), "missing {want}:\n{msg}");
    }
    let msg = messages(&errors(&with_tcp_extra(
        "[service.load]\nline_size = 2000000",
    )));
    assert!(
        msg.contains("service[1].load: line_size 2000000 exceeds"),
        "{msg}"
    );
}

#[test]
fn durations_at_their_bounds_are_accepted() {
    let text = with_tcp_extra(
        "drain_ms = 604800000\nwarm_ms = 0\n\
         [service.health]\ninterval_ms = 10\ndeadline_ms = 3600000\ntimeout_ms = 300000\n\
         [service.load]\nlines = 10000000\nrate = 0\ntimeout_ms = 1\n\
         [service.watch]\nwindow_ms = 604800000\ninterval_ms = 10",
    )
    .replace("[daemon]", "[daemon]\nprobe_interval_ms = 3600000");
    let c = Config::parse(&text).expect("bounds are inclusive");
    let s = &c.services[1];
    assert_eq!(s.drain, Duration::from_secs(7 * 86_400));
    assert_eq!(s.checks.watch.window, Duration::from_secs(7 * 86_400));
    assert_eq!(s.checks.watch.interval, Duration::from_millis(10));
    // Whatever the config allows fits the datapath's u64 nanoseconds.
    assert!(u64::try_from(s.drain.as_nanos()).is_ok());
}

mod fuzz {
    //! Random and hostile config files: every one is parsed whole into a valid config or
    //! rejected with errors naming fields, never a panic.

    use proptest::prelude::*;

    use super::*;

    /// Values a hostile or careless file puts where a value goes.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("0".to_string()),
            Just("-1".to_string()),
            Just("18446744073709551615".to_string()),
            Just("9223372036854775807".to_string()),
            Just("1e308".to_string()),
            Just("nan".to_string()),
            Just("\"\"".to_string()),
            Just("[]".to_string()),
            Just("{}".to_string()),
            Just("\"198.18.2.2:0\"".to_string()),
            Just("\"[::1]:514\"".to_string()),
            Just("[\"198.18.2.2:514\", \"198.18.2.2:514\"]".to_string()),
            any::<i64>().prop_map(|v| v.to_string()),
            "\"[ -~]{0,30}\"",
        ]
    }

    /// The example with some `key = value` lines given hostile values, some lines dropped and
    /// some repeated.
    fn mutated() -> impl Strategy<Value = String> {
        let lines: Vec<String> = GOOD.lines().map(str::to_string).collect();
        let n = lines.len();
        proptest::collection::vec((0..n, 0u8..4, value()), 0..8).prop_map(move |edits| {
            let mut l = lines.clone();
            for (i, kind, v) in edits {
                let i = i % l.len().max(1);
                if l.is_empty() {
                    break;
                }
                match kind {
                    0 => {
                        if let Some((k, _)) = l[i].split_once('=') {
                            l[i] = format!("{k}= {v}");
                        }
                    }
                    1 => {
                        l.remove(i);
                    }
                    2 => {
                        let dup = l[i].clone();
                        l.insert(i, dup);
                    }
                    _ => l.insert(i, format!("watch = {{ window_ms = {v} }}")),
                }
            }
            l.join("\n")
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 512,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn any_bytes_are_rejected_or_parsed_without_panicking(text in "\\PC{0,400}") {
            let _ = Config::parse(&text);
        }

        #[test]
        fn hostile_values_are_rejected_with_field_paths_or_accepted_whole(text in mutated()) {
            match Config::parse(&text) {
                Ok(c) => {
                    for s in &c.services {
                        for color in Color::BOTH {
                            prop_assert!(check_pool(s.members(color)).is_ok() || s.members(color).is_empty());
                        }
                        prop_assert!(s.drain <= Duration::from_secs(7 * 24 * 3600));
                    }
                }
                Err(ParseFailure::Invalid(errors)) => {
                    prop_assert!(!errors.is_empty());
                    for e in errors {
                        prop_assert!(!e.field.is_empty() && !e.to_string().is_empty());
                    }
                }
                Err(ParseFailure::Syntax(m)) => prop_assert!(!m.is_empty()),
            }
        }
    }
}

#[test]
fn a_fleet_section_is_optional_and_checked_whole() {
    assert_eq!(Config::parse(GOOD).expect("single host").fleet, None);
    let fleet = GOOD.replace(
        "[daemon]",
        "[fleet]\nendpoints = [\"http://198.18.0.1:2379\", \"http://198.18.0.2:2379/\"]\n\
         cluster = \"edge-eu\"\nhost_id = \"edge-1.eu\"\n\n[daemon]",
    );
    let f = Config::parse(&fleet)
        .expect("fleet")
        .fleet
        .expect("fleet section");
    assert_eq!(f.cluster, "edge-eu");
    assert_eq!(f.host_id, "edge-1.eu");
    assert_eq!(f.lease_ttl, Duration::from_secs(5));
    assert_eq!(f.ack_deadline, Duration::from_secs(10));
    assert_eq!(f.tls, None);
    // Without host_id: the hostname.
    let unnamed = fleet.replace("host_id = \"edge-1.eu\"\n", "");
    let host = Config::parse(&unnamed)
        .expect("default host id")
        .fleet
        .expect("fleet")
        .host_id;
    assert!(!host.is_empty());

    let bad = GOOD.replace(
        "[daemon]",
        "[fleet]\nendpoints = [\"198.18.0.1:2379\", \"https://e:2379\"]\ncluster = \"a/b\"\n\
         host_id = \"has space\"\nlease_ttl_s = 1\nack_deadline_ms = 5\n\
         [fleet.tls]\nca = \"relative.pem\"\ncert = \"/etc/c.pem\"\n\n[daemon]",
    );
    let e = errors(&bad);
    let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
    for f in [
        "fleet.endpoints[0]",
        "fleet.cluster",
        "fleet.host_id",
        "fleet.lease_ttl_s",
        "fleet.ack_deadline_ms",
        "fleet.tls.ca",
        "fleet.tls",
    ] {
        assert!(fields.contains(&f), "{f} not reported: {e:?}");
    }
    let no_tls = GOOD.replace(
        "[daemon]",
        "[fleet]\nendpoints = [\"https://e:2379\"]\ncluster = \"c\"\nhost_id = \"h\"\n\n[daemon]",
    );
    let e = errors(&no_tls);
    assert!(
        e.iter()
            .any(|e| e.field == "fleet.tls" && e.reason.contains("https")),
        "{e:?}"
    );
    let empty = GOOD.replace(
        "[daemon]",
        "[fleet]\nendpoints = []\ncluster = \"c\"\n\n[daemon]",
    );
    assert!(errors(&empty).iter().any(|e| e.field == "fleet.endpoints"));
}
