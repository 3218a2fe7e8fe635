//! The monitoring kit shipped in switcher-userspace/dist/monitoring: the alert rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`, each alert raised by
//! the series that should raise it and quiet otherwise); the Grafana dashboard is valid JSON
//! whose every panel queries something. That every metric they name is exported is checked
//! against a real scrape in switcher-userspace's telemetry tests.

use std::{path::PathBuf, process::Command};

fn kit() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../switcher-userspace/dist/monitoring")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(kit())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running promtool (Debian package prometheus; cargo xtask setup installs it): {e}"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {}:\n{text}", args.join(" "));
    text
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let check = promtool(&["check", "rules", "switcher-alerts.yml"]);
    assert!(check.contains("SUCCESS: 12 rules found"), "{check}");
    let test = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(test.contains("SUCCESS"), "{test}");
    // Every alert has a test case.
    let rules = std::fs::read_to_string(kit().join("switcher-alerts.yml")).expect("rules");
    let tests = std::fs::read_to_string(kit().join("alerts_test.yml")).expect("tests");
    for name in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {name}")),
            "{name} has no promtool test"
        );
    }
}

#[test]
fn the_grafana_dashboard_is_valid_and_every_panel_queries() {
    let text = std::fs::read_to_string(kit().join("grafana-switcher.json")).expect("dashboard");
    let d: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    assert_eq!(d["uid"], "switcher");
    let panels = d["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut exprs = Vec::new();
    for p in panels {
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} queries nothing", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or("");
            assert!(expr.contains("switcher_"), "panel {}: {expr:?}", p["title"]);
            exprs.push(expr.to_string());
        }
    }
    for a in d["annotations"]["list"].as_array().expect("annotations") {
        exprs.push(a["expr"].as_str().expect("annotation expr").to_string());
    }
    // Every query is valid PromQL: promtool parses them as recording rules.
    let rules: String = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            format!(
                "      - record: switcher:panel_{i}\n        expr: {}\n",
                serde_json::to_string(e).expect("quote")
            )
        })
        .collect();
    let path = std::env::temp_dir().join(format!("switcher-dashboard-{}.yml", std::process::id()));
    std::fs::write(
        &path,
        format!("groups:\n  - name: dashboard\n    rules:\n{rules}"),
    )
    .expect("write");
    let check = promtool(&["check", "rules", &path.display().to_string()]);
    let _ = std::fs::remove_file(&path);
    assert!(
        check.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{check}"
    );
}
