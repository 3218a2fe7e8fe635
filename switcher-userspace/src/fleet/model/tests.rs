use super::*;

fn desired(active: Color, hash: &str) -> Desired {
    Desired {
        active,
        config_hash: hash.into(),
        actor: "cli:root".into(),
        reason: "t".into(),
        at_ms: 1,
        deployment: None,
        definition: None,
    }
}

fn report(host: &str, applied: i64, active: Color, hash: &str) -> HostReport {
    HostReport {
        host: host.into(),
        at_ms: 2,
        services: BTreeMap::from([(
            "syslog".to_string(),
            ServiceReport {
                applied_revision: applied,
                active,
                generation: 3,
                config_hash: hash.into(),
                nack: None,
                overridden: None,
                apply_us: None,
                deployment: None,
            },
        )]),
    }
}

#[test]
fn a_host_in_sync_has_no_drift_and_each_kind_of_drift_is_named() {
    let want = BTreeMap::from([("syslog".to_string(), (7, desired(Color::Green, "aa")))]);
    let mut nacked = report("e", 5, Color::Blue, "aa");
    if let Some(s) = nacked.services.get_mut("syslog") {
        s.nack = Some(Nack {
            revision: 7,
            error: "no".into(),
            at_ms: 3,
        });
    }
    let reports = vec![
        report("a", 7, Color::Green, "aa"),
        report("b", 7, Color::Blue, "aa"),
        report("c", 7, Color::Green, "bb"),
        report("d", 5, Color::Green, "aa"),
        nacked,
    ];
    let known = BTreeSet::from(["a".to_string(), "f".to_string()]);
    let st = FleetStatus::build("lab", "a", &want, &reports, &known);
    let drift = |h: &str| {
        st.hosts
            .iter()
            .find(|v| v.host == h)
            .map(|v| v.drift.join("; "))
            .unwrap_or_else(|| panic!("no host {h}"))
    };
    assert_eq!(drift("a"), "");
    assert!(
        drift("b").contains("on blue (desired green)"),
        "{}",
        drift("b")
    );
    assert!(
        drift("c").contains("config bb (desired aa)"),
        "{}",
        drift("c")
    );
    assert!(
        drift("d").contains("applied revision 5 of 7"),
        "{}",
        drift("d")
    );
    assert!(
        drift("e").contains("refused revision 7: no"),
        "{}",
        drift("e")
    );
    assert!(drift("f").contains("disconnected"), "{}", drift("f"));
    assert_eq!(st.in_drift, 5);
    assert_eq!(st.hosts.len(), 6, "known host a is not listed twice");
    let lag = st.hosts[3].services["syslog"].lag;
    assert_eq!((st.hosts[3].host.as_str(), lag), ("d", 2));
}

#[test]
fn an_older_nack_is_not_drift_once_a_later_revision_applied() {
    let want = BTreeMap::from([("syslog".to_string(), (9, desired(Color::Green, "aa")))]);
    let mut r = report("a", 9, Color::Green, "aa");
    if let Some(s) = r.services.get_mut("syslog") {
        s.nack = Some(Nack {
            revision: 7,
            error: "old".into(),
            at_ms: 3,
        });
    }
    let st = FleetStatus::build("lab", "a", &want, &[r], &BTreeSet::new());
    assert_eq!(st.in_drift, 0, "{:?}", st.hosts);
}

#[test]
fn the_config_hash_ignores_the_initial_colour_and_sees_everything_else() {
    let text = |green: &str, active: &str| {
        format!(
            "[daemon]\ninterfaces = [\"eth0\"]\n[[service]]\nname = \"s\"\nvip = \"198.18.10.1\"\n\
             port = 514\nprotocol = \"udp\"\nactive = \"{active}\"\n\
             blue = {{ backend = \"198.18.1.2:514\" }}\ngreen = {{ backend = \"{green}\" }}\n"
        )
    };
    let hash = |green: &str, active: &str| {
        let cfg = crate::config::Config::parse(&text(green, active)).expect("config");
        config_hash(&cfg.services[0])
    };
    let base = hash("198.18.2.2:514", "blue");
    assert_eq!(base.len(), 16);
    assert_eq!(base, hash("198.18.2.2:514", "green"));
    assert_ne!(base, hash("198.18.2.3:514", "blue"));
}
