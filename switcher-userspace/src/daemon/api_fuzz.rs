//! Hostile API requests through the real socket loop: random bytes, mutated valid requests,
//! well-formed requests with absurd values. Every line gets one JSON answer (an error that
//! says why, or the result), the connection stays usable, nothing panics, and a request that
//! fails changes nothing the controller shows.

use std::sync::atomic::{AtomicU32, Ordering};

use proptest::prelude::*;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

use super::socket::{serve, Access};
use crate::{api::Response, config::Config, controller::Controller, datapath::fake::FakeDatapath};

static NEXT: AtomicU32 = AtomicU32::new(0);

const SERVICES: &str = r#"
[[service]]
name = "u"
vip = "198.18.10.10"
port = 514
protocol = "udp"
blue = { backend = "198.18.1.2:514" }
green = { backend = "198.18.2.2:514" }
"#;

/// Requests that are valid JSON and name real operations, as mutation seeds.
const SEEDS: &[&str] = &[
    r#"{"op":"status"}"#,
    r#"{"op":"status","service":"u"}"#,
    r#"{"op":"deploy","service":"u","color":"green","members":["198.18.2.9:514"]}"#,
    r#"{"op":"deploy","service":"u","color":"green","backend":"198.18.2.9:514","version":"v2"}"#,
    r#"{"op":"deploy","service":"u","color":"blue","members":[{"addr":"198.18.1.9:514","weight":3}]}"#,
    r#"{"op":"flip","service":"u","to":"green","force":true,"reason":"x"}"#,
    r#"{"op":"rollback","service":"u"}"#,
    r#"{"op":"abort","service":"u"}"#,
    r#"{"op":"history","service":"u"}"#,
    r#"{"op":"reload"}"#,
];

fn mutate(seed: &str, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut b = seed.as_bytes().to_vec();
    for &(at, kind, byte) in edits {
        if b.is_empty() {
            b.push(byte);
            continue;
        }
        let i = at % b.len();
        match kind % 4 {
            0 => b[i] = byte,
            1 => {
                b.remove(i);
            }
            2 => b.insert(i, byte),
            _ => b.truncate(i),
        }
    }
    // One line per request: a newline inside would make two.
    b.retain(|&c| c != b'\n');
    b
}

fn line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // One line per request, as in `mutate`.
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(|mut b| {
            b.retain(|&c| c != b'\n');
            b
        }),
        (
            0..SEEDS.len(),
            proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..6)
        )
            .prop_map(|(i, edits)| mutate(SEEDS[i], &edits)),
        (
            "[a-z]{0,8}",
            prop_oneof![Just("blue"), Just("green"), Just("red")],
            proptest::collection::vec("[0-9a-f:.\\[\\]]{0,24}", 0..70),
            any::<u8>(),
        )
            .prop_map(|(svc, color, members, w)| {
                serde_json::json!({
                    "op": "deploy", "service": svc, "color": color,
                    "members": members.iter().map(|m| serde_json::json!({"addr": m, "weight": w})).collect::<Vec<_>>(),
                })
                .to_string()
                .into_bytes()
            }),
    ]
}

/// No service's deployment is in a phase its own task moves on from.
fn settled(services: &serde_json::Value) -> bool {
    services.as_array().is_some_and(|all| {
        all.iter().all(|s| {
            !matches!(
                s["deployment"]["phase"].as_str(),
                Some("validating" | "ready" | "promoted")
            )
        })
    })
}

/// A case's folder, removed when the case ends (also when it fails).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_request_line_gets_one_answer_and_nothing_panics(lines in proptest::collection::vec(line(), 1..12)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let dir = std::env::temp_dir().join(format!(
                "switcher-apifuzz-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("dir");
            let _removed = RemoveOnDrop(dir.clone());
            let path = dir.join("switcher.toml");
            std::fs::write(
                &path,
                format!(
                    "[daemon]\ninterfaces = [\"lo\"]\nstate_dir = \"{}\"\n\n[http]\nenabled = false\n{SERVICES}",
                    dir.join("state").display()
                ),
            )
            .expect("config");
            let cfg = Config::load(&path).expect("config");
            let ctl = Controller::start(cfg, path, Box::new(FakeDatapath::default()))
                .await
                .expect("controller");
            let (server, client) = UnixStream::pair().expect("pair");
            let me = nix::unistd::geteuid().as_raw();
            let task = tokio::spawn(serve(server, ctl.clone(), None, Access { uid: me }));
            let (r, mut w) = client.into_split();
            let mut r = BufReader::new(r);
            for l in &lines {
                if l.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let shown = |ctl: &Controller| {
                    let ctl = ctl.clone();
                    async move {
                        serde_json::to_value(ctl.status(None).await.expect("status").services)
                            .expect("json")
                    }
                };
                let before = shown(&ctl).await;
                w.write_all(l).await.expect("write");
                w.write_all(b"\n").await.expect("write");
                let mut answer = String::new();
                tokio::time::timeout(std::time::Duration::from_secs(10), r.read_line(&mut answer))
                    .await
                    .expect("an answer within 10 s")
                    .expect("read");
                let resp: Response = serde_json::from_str(&answer)
                    .unwrap_or_else(|e| panic!("answer is not a response ({e}): {answer:?}"));
                if !resp.ok {
                    let e = resp.error.unwrap_or_default();
                    assert!(!e.is_empty(), "an error says why");
                    // A deployment an earlier request set in motion (validating, ready to flip,
                    // watched) changes the status by itself: compare only when none is.
                    if settled(&before) {
                        assert_eq!(
                            shown(&ctl).await,
                            before,
                            "a refused request changed something: {e}"
                        );
                    }
                }
                // A watch request streams events: that connection is the watcher's now.
                if String::from_utf8_lossy(l).contains("\"watch\"") {
                    break;
                }
            }
            drop(w);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
            // The controller still answers and still holds a consistent service.
            let s = ctl.status(Some("u")).await.expect("status after the fuzz");
            assert_eq!(s.services.len(), 1);
            ctl.shutdown(true).await.expect("shutdown");
            let _ = std::fs::remove_dir_all(&dir);
        });
    }
}
