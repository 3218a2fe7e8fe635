//! The dashboard in a real browser: headless Chromium (Debian's) against a real daemon in the
//! lab, driven over the DevTools protocol. The page loads without console errors, shows the
//! active colour and each colour's pool members, its chart draws the data it received, a flip made with the CLI is on the page within one
//! second, and the rollback button is refused without the token and flips back with it. A
//! screenshot is saved to target/test-artifacts/dashboard.png. Needs root.

mod support;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};
use chromiumoxide::{
    browser::{Browser, BrowserConfig},
    cdp::{
        browser_protocol::log::EventEntryAdded,
        js_protocol::runtime::{EventConsoleApiCalled, EventExceptionThrown},
    },
    page::ScreenshotParams,
    Page,
};
use futures_util::StreamExt as _;
use support::privileged;
use switcher::{api::Request, domain::Color};
use switcher_tests::{
    fleet::FleetLab,
    lab::{Host, BLUE_V4, GREEN_V4},
    rig::{self, Rig, UDP_PORT},
};

const CHROMIUM: &str = "/usr/bin/chromium";

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn artifacts() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/test-artifacts"
    ))
}

async fn eval<T: serde::de::DeserializeOwned>(page: &Page, js: &str) -> Result<T> {
    page.evaluate(js)
        .await
        .with_context(|| format!("evaluating {js}"))?
        .into_value()
        .with_context(|| format!("result of {js}"))
}

/// Polls `js` (a boolean expression) until true; returns how long it took.
async fn wait_for(page: &Page, js: &str, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if eval::<bool>(page, js).await.unwrap_or(false) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {js}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn active_is(service: &str, color: &str) -> String {
    format!(
        "document.querySelector('[data-testid=\"active-{service}\"]')?.textContent === '{color}'"
    )
}

/// Records in the page when the active badge of `service` first reads `color` (wall clock),
/// so the test measures the flip's arrival without its own polling delay.
fn watch_badge(service: &str, color: &str) -> String {
    format!(
        "(() => {{ window.__seen = null; const el = document.querySelector('[data-testid=\"active-{service}\"]');
           const check = () => {{ if (window.__seen === null && el.textContent === '{color}') window.__seen = Date.now(); }};
           new MutationObserver(check).observe(el, {{ childList: true, characterData: true, subtree: true }});
           check(); return true; }})()"
    )
}

/// True when `color`'s pool of `service` is one member, `addr`, with all new flows, in
/// service (its row not marked out).
fn member_is(service: &str, color: &str, addr: &str) -> String {
    format!(
        "(() => {{ const rows = document.querySelectorAll('[data-service=\"{service}\"] [data-testid=\"{color}-members\"] li.member');
           return rows.length === 1 && rows[0].dataset.member === '{addr}'
             && rows[0].querySelector('.addr').textContent === '{addr}'
             && rows[0].querySelector('.pct').textContent === '100%'
             && !rows[0].classList.contains('out'); }})()"
    )
}

/// Checks udp4's packets/s chart against the samples the page charted: "ok", or what is
/// wrong. Each line (an SVG polyline per colour) has one vertex per sample; x is linear in the
/// sample's time and y in its rate, from the baseline (the lowest horizontal line, 0) up, one
/// scale for both colours; blue's line rises visibly (it has the traffic); the y axis has rate
/// labels, the x axis wall-clock ones, the legend both colours.
const CHART_DRAWN: &str = r#"(() => {
  const box = document.querySelector('[data-service="udp4"] .chart');
  const svg = box && box.querySelector('svg');
  if (!svg) return 'no chart';
  const data = window.switcherDashboard.chartData('udp4');
  const n = data.t.length;
  const vertices = {};
  for (const c of ['blue', 'green']) {
    const line = svg.querySelector(`polyline[data-series="${c}"]`);
    if (!line) return `no ${c} line`;
    vertices[c] = Array.from({ length: line.points.numberOfItems }, (_, i) => line.points.getItem(i));
    if (vertices[c].length !== n) return `${n} samples, ${vertices[c].length} ${c} vertices`;
    if (!(line.getBBox().width > 0)) return `${c} line has no extent`;
  }
  const near = (a, b) => Math.abs(a - b) <= 1.5;
  const b = vertices.blue;
  const kx = (b[n - 1].x - b[0].x) / (data.t[n - 1] - data.t[0]);
  if (!(kx > 0)) return 'time does not run left to right';
  const base = Math.max(...Array.from(svg.querySelectorAll('line'))
    .filter((l) => l.y1.baseVal.value === l.y2.baseVal.value).map((l) => l.y1.baseVal.value));
  const top = b.reduce((m, p, i) => (data.blue[i] > data.blue[m] ? i : m), 0);
  if (!(data.blue[top] > 0 && base - b[top].y > 20)) return `blue's peak ${data.blue[top]} drawn ${base - b[top].y} px above the baseline`;
  const ky = (base - b[top].y) / data.blue[top];
  for (const c of ['blue', 'green']) {
    for (let i = 0; i < n; i++) {
      const p = vertices[c][i];
      if (!near(p.x, b[0].x + (data.t[i] - data.t[0]) * kx) || !near(p.y, base - data[c][i] * ky)) {
        return `${c} sample ${i} (${data[c][i]}) drawn at ${p.x},${p.y}`;
      }
    }
  }
  const labels = Array.from(svg.querySelectorAll('text'), (t) => t.textContent);
  if (!labels.some((l) => l.endsWith('pkt/s'))) return `no rate labels: ${labels}`;
  if (!labels.some((l) => /^\d\d:\d\d(:\d\d)?$/.test(l))) return `no time labels: ${labels}`;
  const legend = box.querySelector('.legend')?.textContent ?? '';
  if (!legend.includes('blue') || !legend.includes('green')) return `legend: ${legend}`;
  return 'ok';
})()"#;

/// What the page lists for `color`'s members of udp4, for an error message.
async fn members_text(page: &Page, color: &str) -> String {
    let js = format!(
        "document.querySelector('[data-service=\"udp4\"] [data-testid=\"{color}-members\"]')?.innerText ?? 'no members list'"
    );
    eval::<String>(page, &js)
        .await
        .unwrap_or_else(|e| format!("{e:#}"))
}

/// A headless Chromium with one page, collecting console errors, exceptions and failed
/// loads into `problems`.
struct Session {
    browser: Browser,
    page: Page,
    events: tokio::task::JoinHandle<()>,
    collect: tokio::task::JoinHandle<()>,
}

impl Session {
    async fn open(profile: &std::path::Path, problems: Arc<Mutex<Vec<String>>>) -> Result<Session> {
        let config = BrowserConfig::builder()
            .chrome_executable(CHROMIUM)
            .no_sandbox()
            .new_headless_mode()
            .user_data_dir(profile)
            .window_size(1500, 1300)
            .viewport(None)
            .launch_timeout(Duration::from_secs(60))
            .request_timeout(Duration::from_secs(30))
            .arg("--disable-gpu")
            .arg("--disable-dev-shm-usage")
            .build()
            .map_err(|e| anyhow::anyhow!("browser config: {e}"))?;
        let (browser, mut handler) = Browser::launch(config)
            .await
            .context("launching chromium")?;
        let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
        let page = browser.new_page("about:blank").await?;
        let mut console = page.event_listener::<EventConsoleApiCalled>().await?;
        let mut exceptions = page.event_listener::<EventExceptionThrown>().await?;
        let mut logs = page.event_listener::<EventEntryAdded>().await?;
        let p = problems;
        let collect = tokio::spawn(async move {
            loop {
                let line = tokio::select! {
                    Some(e) = console.next() => {
                        let kind = format!("{:?}", e.r#type).to_lowercase();
                        if kind != "error" && kind != "warning" { continue; }
                        format!("console.{kind}: {:?}", e.args.iter().map(|a| a.value.clone()).collect::<Vec<_>>())
                    }
                    Some(e) = exceptions.next() => {
                        let d = &e.exception_details;
                        let what = d.exception.as_ref().and_then(|x| x.description.clone()).unwrap_or_else(|| d.text.clone());
                        format!("exception at {}:{}: {what}", d.url.clone().unwrap_or_default(), d.line_number + 1)
                    }
                    Some(e) = logs.next() => {
                        let level = format!("{:?}", e.entry.level).to_lowercase();
                        if level != "error" && level != "warning" { continue; }
                        format!("log {level}: {} {}", e.entry.text, e.entry.url.clone().unwrap_or_default())
                    }
                    else => return,
                };
                if let Ok(mut v) = p.lock() {
                    v.push(line);
                }
            }
        });
        Ok(Session {
            browser,
            page,
            events,
            collect,
        })
    }

    async fn close(mut self) {
        self.collect.abort();
        let _ = self.browser.close().await;
        let _ = self.browser.wait().await;
        self.events.abort();
    }
}

/// Everything the browser side does; runs inside the edge host's network namespace, where
/// the daemon's listener is.
async fn drive(rig: &Rig, problems: Arc<Mutex<Vec<String>>>) -> Result<()> {
    let session = Session::open(&rig.dir.join("chromium-profile"), problems).await?;
    let result = async {
        let page = &session.page;
        page.goto(rig.web_url("/")).await?;
        // The page renders the live view: active colour, then a chart with data.
        wait_for(page, &active_is("udp4", "blue"), Duration::from_secs(10)).await?;
        wait_for(page, "window.switcherDashboard.chartPoints('udp4') >= 4", Duration::from_secs(15)).await?;
        wait_for(
            page,
            "Number(document.querySelector('[data-service=\"udp4\"] .chart')?.dataset.points) >= 4",
            Duration::from_secs(5),
        )
        .await?;
        // ...and draws it: one vertex per sample on each line, blue's (the traffic) off the
        // baseline, green's (idle) on it, with rate and wall-clock labels and the legend.
        let drawn: String = eval(page, CHART_DRAWN).await?;
        if drawn != "ok" {
            bail!("the packets/s chart of udp4 is not drawn right: {drawn}");
        }
        let pps: String = eval(page, "document.querySelector('[data-service=\"udp4\"] [data-testid=\"blue-pps\"]').textContent").await?;
        if !pps.contains("pkt/s") || pps.starts_with("0 ") {
            bail!("blue's packet rate shows {pps:?} while traffic flows");
        }
        // Each colour lists its pool member by member: the lab's pools of one show their one
        // member with the whole share, in service, and blue's with the traffic.
        for (color, ip) in [("blue", BLUE_V4), ("green", GREEN_V4)] {
            let addr = std::net::SocketAddr::new(ip.into(), UDP_PORT).to_string();
            if let Err(e) = wait_for(page, &member_is("udp4", color, &addr), Duration::from_secs(5)).await {
                bail!("{e:#}; {color}'s members show {:?}", members_text(page, color).await);
            }
        }
        let rate: String = eval(page, "document.querySelector('[data-service=\"udp4\"] [data-testid=\"blue-members\"] .pps').textContent").await?;
        if matches!(rate.as_str(), "0" | "–" | "") {
            bail!("blue's member shows a packet rate of {rate:?} while traffic flows");
        }

        // A flip with the CLI shows within a second.
        eval::<bool>(page, &watch_badge("udp4", "green")).await?;
        let asked = now_ms();
        let out = std::process::Command::new(rig::bin("switcher")?)
            .arg("--socket")
            .arg(&rig.socket)
            .args(["flip", "udp4", "--to", "green"])
            .output()
            .context("switcher flip")?;
        if !out.status.success() {
            bail!("switcher flip: {}", String::from_utf8_lossy(&out.stderr));
        }
        wait_for(page, "window.__seen !== null", Duration::from_secs(3)).await?;
        let seen: f64 = eval(page, "window.__seen").await?;
        let shown_after = seen - asked;
        eprintln!("CLI flip -> page shows green after {shown_after:.0} ms");
        if shown_after > 1000.0 {
            bail!("the flip took {shown_after:.0} ms to reach the page (limit 1000 ms)");
        }

        // A deployment to blue, promoted: the page shows the timeline with its evidence.
        rig.call(&Request::Deploy {
            service: "udp4".into(),
            color: Color::Blue,
            members: vec![switcher::config::Member::new(std::net::SocketAddr::new(BLUE_V4.into(), UDP_PORT))],
            version: Some("v2.0.0".into()),
            force: false,
        })?;
        rig.call(&Request::Promote { service: "udp4".into(), wait: true })?;
        wait_for(page, &active_is("udp4", "blue"), Duration::from_secs(2)).await?;
        wait_for(
            page,
            "/promoted|stable/.test(document.querySelector('[data-testid=\"phase-udp4\"]').textContent)",
            Duration::from_secs(2),
        )
        .await?;
        wait_for(
            page,
            "(() => { const t = document.querySelector('[data-service=\"udp4\"] .steps'); return t.textContent.includes('validating → ready') && t.querySelectorAll('details').length >= 2; })()",
            Duration::from_secs(2),
        )
        .await?;
        // Let the chart show the flips, then keep the picture.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let png = page
            .screenshot(ScreenshotParams::builder().full_page(true).build())
            .await
            .context("screenshot")?;
        std::fs::create_dir_all(artifacts())?;
        std::fs::write(artifacts().join("dashboard.png"), &png)?;

        // Rollback without the token: refused, nothing changes.
        page.find_element("[data-service=\"udp4\"] button[data-action=\"rollback\"]")
            .await?
            .click()
            .await?;
        wait_for(
            page,
            "document.querySelector('[data-testid=\"notice\"]').textContent.includes('refused (401)')",
            Duration::from_secs(3),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(700)).await;
        if !eval::<bool>(page, &active_is("udp4", "blue")).await? {
            bail!("a refused rollback changed the active colour");
        }

        // With the token it flips back to green, on the page within a second.
        let token = rig.web_token()?;
        let set = format!(
            "(() => {{ const t = document.getElementById('token'); t.value = '{token}'; t.dispatchEvent(new Event('change')); return true; }})()"
        );
        eval::<bool>(page, &set).await?;
        eval::<bool>(page, &watch_badge("udp4", "green")).await?;
        let clicked = now_ms();
        page.find_element("[data-service=\"udp4\"] button[data-action=\"rollback\"]")
            .await?
            .click()
            .await?;
        if let Err(e) = wait_for(page, "window.__seen !== null", Duration::from_secs(3)).await {
            let notice: String = eval(
                page,
                "document.querySelector('[data-testid=\"notice\"]').textContent",
            )
            .await
            .unwrap_or_default();
            bail!("{e:#}; the page says: {notice:?}");
        }
        let seen: f64 = eval(page, "window.__seen").await?;
        eprintln!("rollback button -> page shows green after {:.0} ms", seen - clicked);
        if seen - clicked > 1000.0 {
            bail!("the rollback took {:.0} ms to reach the page", seen - clicked);
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    session.close().await;
    result
}

#[test]
fn dashboard_shows_live_state_and_guards_actions() {
    if !privileged() {
        return;
    }
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} missing: `cargo xtask setup` installs Debian's chromium"
    );
    let rig = Rig::up(
        "db",
        &rig::standard_services("redirect", switcher_tests::services::STANDARD_CHECKS),
    )
    .expect("rig");
    // Traffic for the charts during the whole test, bounded: 300 lines/s for at most 60 s.
    let sender = rig.stream("udp", "d", 18_000, 300).expect("sender");
    let problems = Arc::new(Mutex::new(Vec::new()));
    let ns = rig.lab.ns(Host::Edge).to_string();
    let result = switcher_tests::lab::in_netns(&ns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("tokio runtime")?;
        rt.block_on(drive(&rig, problems.clone()))
    })
    .expect("netns");
    let _ = sender.stop();
    result.expect("dashboard in chromium");
    let problems = problems.lock().map(|v| v.clone()).unwrap_or_default();
    // The refused rollback is a 401 the browser logs as a failed resource load: expected.
    let unexpected: Vec<&String> = problems
        .iter()
        .filter(|p| !(p.contains("401") && p.contains("/api/services/udp4/rollback")))
        .collect();
    assert!(
        unexpected.is_empty(),
        "console errors on the dashboard: {unexpected:#?}"
    );
}

/// The fleet view: two hosts in a fleet; the page of edge-0 lists both in sync, shows a flip
/// made on edge-1 and edge-1's disconnection when it is cut from etcd.
async fn drive_fleet(fleet: &FleetLab, problems: Arc<Mutex<Vec<String>>>) -> Result<()> {
    let rig = &fleet.rigs[0];
    let session = Session::open(&rig.dir.join("chromium-profile"), problems).await?;
    let result = async {
        let page = &session.page;
        page.goto(rig.web_url("/")).await?;
        let text = |id: &str| {
            format!("(document.querySelector('[data-testid=\"{id}\"]')?.textContent ?? '')")
        };
        for h in ["edge-0", "edge-1"] {
            let in_sync = format!("{} === 'in sync'", text(&format!("fleet-drift-{h}")));
            if let Err(e) = wait_for(page, &in_sync, Duration::from_secs(10)).await {
                let shown: String = eval(
                    page,
                    "(document.getElementById('fleet-section').hidden ? 'hidden: ' : '') + document.getElementById('fleet-section').innerText",
                )
                .await
                .unwrap_or_default();
                bail!("{e:#}; the fleet view shows {shown:?}");
            }
        }
        // A fleet flip asked on the other host shows on this one's page.
        switcher_tests::fleet::flip(&fleet.rigs[1], "udp4", Color::Green)?;
        for h in ["edge-0", "edge-1"] {
            wait_for(
                page,
                &format!("{}.startsWith('green')", text(&format!("fleet-{h}-udp4"))),
                Duration::from_secs(3),
            )
            .await?;
        }
        fleet.etcd.partition(&fleet.rigs[1].lab)?;
        wait_for(
            page,
            &format!("{} === 'disconnected'", text("fleet-conn-edge-1")),
            Duration::from_secs(15),
        )
        .await?;
        let summary: String = eval(page, &text("fleet-summary")).await?;
        if !summary.contains("1 in drift") {
            bail!("the summary should count edge-1 in drift: {summary:?}");
        }
        std::fs::create_dir_all(artifacts())?;
        page.save_screenshot(
            ScreenshotParams::builder().full_page(true).build(),
            artifacts().join("dashboard-fleet.png"),
        )
        .await?;
        fleet.etcd.heal(&fleet.rigs[1].lab)?;
        wait_for(
            page,
            &format!("{} === 'connected'", text("fleet-conn-edge-1")),
            Duration::from_secs(15),
        )
        .await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    session.close().await;
    result
}

#[test]
fn the_fleet_view_shows_every_host_a_fleet_flip_and_a_disconnected_host() {
    if !privileged() {
        return;
    }
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} missing: `cargo xtask setup` installs Debian's chromium"
    );
    let fleet = FleetLab::up("dbf", 2, 1, "").expect("fleet");
    let problems = Arc::new(Mutex::new(Vec::new()));
    let ns = fleet.rigs[0].lab.ns(Host::Edge).to_string();
    let result = switcher_tests::lab::in_netns(&ns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("tokio runtime")?;
        rt.block_on(drive_fleet(&fleet, problems.clone()))
    })
    .expect("netns");
    result.expect("fleet view in chromium");
    let problems = problems.lock().map(|v| v.clone()).unwrap_or_default();
    assert!(
        problems.is_empty(),
        "console errors on the fleet view: {problems:#?}"
    );
}
