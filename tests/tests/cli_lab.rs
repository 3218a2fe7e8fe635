//! The CLI as a script drives it: distinct exit codes (usage, daemon unreachable, refused,
//! rejected, rolled back), errors as JSON under `--json`, and `promote --wait` that waits for
//! the end of the watch window. Against the real daemon in the lab. Needs root.

mod support;

use std::time::{Duration, Instant};

use support::privileged;
use switcher::domain::Color;
use switcher_tests::{
    lab::Host,
    rig::{self, Rig},
    services::STANDARD_CHECKS,
};

/// Runs the CLI: (exit code, stdout, stderr).
fn run(rig: &Rig, args: &[&str]) -> (i32, String, String) {
    let (_, out) = rig.cli(args).expect("run the CLI");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_error(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout:?}"))
}

fn active(rig: &Rig) -> Color {
    rig.status()
        .expect("status")
        .services
        .into_iter()
        .find(|s| s.name == "udp4")
        .expect("udp4")
        .active
}

#[test]
fn exit_codes_and_json_errors_let_a_script_drive_a_deployment() {
    if !privileged() {
        return;
    }
    let rig = Rig::up("cx", &rig::standard_services("redirect", STANDARD_CHECKS)).expect("rig");

    // Usage, and no daemon behind a socket.
    let (code, _, _) = run(&rig, &["promote"]);
    assert_eq!(code, 2, "usage");
    let sw = rig::bin("switcher").expect("binary");
    let out = std::process::Command::new(&sw)
        .args(["--socket", "/nonexistent/switcher.sock", "status", "--json"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3));
    let e = json_error(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        (e["exit"].as_u64(), e["kind"].as_str()),
        (Some(3), Some("unreachable"))
    );

    // Refused: nothing to abort; the same as JSON.
    let (code, _, err) = run(&rig, &["abort", "udp4"]);
    assert_eq!(code, 4, "{err}");
    let (code, out, _) = run(&rig, &["abort", "udp4", "--json"]);
    assert_eq!(code, 4);
    let e = json_error(&out);
    assert_eq!(e["kind"], "refused");
    assert!(
        e["error"].as_str().unwrap_or("").contains("no deployment"),
        "{e}"
    );

    // `flows`: a live TCP connection through the VIP, with its client and member.
    let sender = rig.stream("tcp", "fl", 400, 100).expect("sender");
    rig.wait_received(
        "fl",
        "lines of the connection at blue",
        Duration::from_secs(20),
        |r| r.blue.len() >= 50,
    )
    .expect("the connection delivers");
    let (code, out, err) = run(&rig, &["flows", "tcp4", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("flows JSON");
    assert_eq!(v["total"], 1, "{v}");
    let f = &v["flows"][0];
    assert!(
        f["client"]
            .as_str()
            .unwrap_or("")
            .starts_with("198.18.0.1:"),
        "{f}"
    );
    assert_eq!(
        (f["member"].as_str(), f["color"].as_str()),
        (Some("198.18.1.2:601"), Some("blue"))
    );
    assert_eq!(
        (f["state"].as_str(), f["data"].as_bool()),
        (Some("open"), Some(true))
    );
    let (code, out, _) = run(&rig, &["flows"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("SERVICE") && out.contains("tcp4") && out.contains("1 connection(s)"),
        "{out}"
    );
    rig::finish_sender(&sender, Duration::from_secs(20)).expect("sender");

    // A good candidate: --wait returns once the watch window passed, exit 0.
    let (code, _, err) = run(&rig, &["deploy", "udp4", "--green", "198.18.2.2:514"]);
    assert_eq!(code, 0, "{err}");
    let t0 = Instant::now();
    let (code, out, err) = run(&rig, &["promote", "udp4", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("is stable"), "{out}");
    assert!(
        t0.elapsed() >= Duration::from_secs(3),
        "returned before the 3 s watch window ended"
    );
    assert_eq!(active(&rig), Color::Green);

    // A candidate whose health fails: rejected, exit 5 (and as JSON).
    rig.fault(Host::Blue, r#"{"health_ok": false}"#)
        .expect("fault");
    let (code, _, err) = run(&rig, &["deploy", "udp4", "--blue", "198.18.1.2:514"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = run(&rig, &["promote", "udp4", "--wait", "--json"]);
    assert_eq!(code, 5, "{out}");
    assert_eq!(json_error(&out)["kind"], "rejected");
    assert_eq!(active(&rig), Color::Green);
    rig.fault(Host::Blue, r#"{"health_ok": true}"#)
        .expect("fault");

    // Promoted, then failing in the watch window: rolled back, exit 6.
    let (code, _, err) = run(&rig, &["deploy", "udp4", "--blue", "198.18.1.2:514"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = std::thread::scope(|s| {
        let promote = s.spawn(|| run(&rig, &["promote", "udp4", "--wait"]));
        let deadline = Instant::now() + Duration::from_secs(30);
        while active(&rig) != Color::Blue {
            assert!(Instant::now() < deadline, "never flipped to blue");
            std::thread::sleep(Duration::from_millis(50));
        }
        rig.fault(Host::Blue, r#"{"health_ok": false}"#)
            .expect("fault");
        promote.join().expect("promote thread")
    });
    assert_eq!(code, 6, "{out}{err}");
    assert!(err.contains("rolled back"), "{err}");
    assert_eq!(active(&rig), Color::Green);
    rig.fault(Host::Blue, r#"{"health_ok": true}"#)
        .expect("fault");
}
