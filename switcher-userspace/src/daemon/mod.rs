//! `switcher daemon`: loads or adopts the datapath, starts the controller on it, serves the
//! local API on a root-only Unix socket ([`socket`]) and the metrics and dashboard over HTTP
//! (`web`), reloads on SIGHUP, and stops on SIGINT/SIGTERM. By default it detaches the
//! datapath on exit; with `--keep-attached` (what the systemd unit uses) it leaves it pinned
//! so a restart or upgrade never interrupts traffic. One daemon per datapath and state
//! folder: [`lock`].

#[cfg(test)]
mod api_fuzz;
pub mod lock;
mod notify;
mod private_dir;
mod socket;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::{
    config::{Config, HttpConfig},
    controller::Controller,
    datapath::{self, BpfDatapath, FlowPolicy, FlowSweeper},
    fleet::Fleet,
    web,
};

/// How often the redirect allow-list is re-read from the kernel.
const REDIRECT_REFRESH: Duration = Duration::from_secs(2);
/// How often closed, idle and orphaned connections leave the protected flow table: well
/// inside the closing grace, and a removed service's id quarantine.
const FLOW_SWEEP: Duration = Duration::from_secs(5);

pub async fn run(cfg: Config, cfg_path: PathBuf, keep_attached: bool) -> Result<()> {
    // The locks first, held until the end: a daemon already running on this datapath or
    // state folder (whatever its socket) makes this one stop before it touches either, and
    // before it could remove that daemon's socket.
    let _locks = lock::DaemonLocks::acquire(&cfg.daemon.bpffs_dir, &cfg.daemon.state_dir)?;
    let socket = socket::Bound::bind(&cfg.daemon.socket).await?;
    let serving = Serving {
        http: cfg.http.clone(),
        interfaces: cfg.daemon.interfaces.clone(),
        probe_interval: cfg.daemon.probe_interval,
        state_dir: cfg.daemon.state_dir.clone(),
        maps_dir: datapath::maps_dir(&cfg.daemon.bpffs_dir),
    };
    let dp = BpfDatapath::load(&cfg.daemon.bpffs_dir)?;
    let fleet_cfg = cfg.fleet.clone();
    let cfg = match &fleet_cfg {
        Some(_) => crate::fleet::definitions::startup_config(&cfg_path, &serving.state_dir, cfg),
        None => cfg,
    };
    let (fresh, pins) = (dp.fresh(), dp.dir().to_path_buf());
    let ctl = match Controller::start(cfg, cfg_path.clone(), Box::new(dp)).await {
        Ok(ctl) => ctl,
        // E.g. an interface missing: what this start pinned (and attached) goes, so no
        // program steers traffic with no daemon. Pins adopted from an earlier daemon stay.
        Err(e) => {
            if fresh {
                if let Err(u) = datapath::remove_pins(&pins) {
                    warn!("removing the pins of a failed start: {u:#}");
                }
            }
            return Err(e);
        }
    };
    // The agent is one more caller of the controller; it stops before the controller does.
    let (fleet, agent) = match fleet_cfg {
        Some(f) => {
            let (fleet, task) = Fleet::start(f, cfg_path, serving.state_dir.clone(), ctl.clone());
            (Some(fleet), AbortOnDrop(Some(task)))
        }
        None => (None, AbortOnDrop(None)),
    };
    // From here on the datapath is ours: however serving ends, the controller shuts down.
    let served = serve(&ctl, fleet.as_ref(), socket, &serving).await;
    notify::stopping();
    drop(agent);
    if let Some(f) = &fleet {
        f.leave().await;
    }
    let shut = ctl.shutdown(keep_attached).await;
    served.and(shut)
}

/// What serving needs of the config (the rest went to the controller).
struct Serving {
    http: HttpConfig,
    interfaces: Vec<String>,
    probe_interval: Option<Duration>,
    state_dir: PathBuf,
    maps_dir: PathBuf,
}

/// Serves the HTTP listener and the API socket until SIGINT or SIGTERM.
async fn serve(
    ctl: &Controller,
    fleet: Option<&Fleet>,
    socket: socket::Bound,
    serving: &Serving,
) -> Result<()> {
    for s in &ctl.status(None).await?.services {
        info!(service = %s.name, vip = %s.vip, port = s.port, protocol = %s.protocol, active = %s.active, "service programmed");
    }
    let web = match serving.http.listen {
        Some(addr) => match start_web(addr, ctl, fleet, serving).await {
            Ok(task) => Some(task),
            // The controller matters more than its dashboard: run on, loudly.
            Err(e) => {
                error!("metrics and dashboard are not served: {e:#}");
                None
            }
        },
        None => None,
    };
    let _web = AbortOnDrop(web);
    // Every pool member is probed: the verdicts take dead members out of their tables, and
    // the metrics and the dashboard show them.
    if let Some(interval) = serving.probe_interval {
        ctl.start_health_monitor(interval);
    }
    ctl.start_flow_sweeper(
        FlowSweeper::open(&serving.maps_dir).context("opening the flow tables for the sweeper")?,
        FlowPolicy::default(),
        FLOW_SWEEP,
    );
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let services = ctl.catalog().await.len();
    notify::ready(&format!("serving {services} service(s)"));
    let _watchdog = AbortOnDrop(notify::start_watchdog(ctl.clone()));
    let mut refresh = tokio::time::interval(REDIRECT_REFRESH);
    loop {
        tokio::select! {
            _ = refresh.tick() => ctl.refresh_redirect_targets().await,
            accepted = socket.listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (ctl, fleet) = (ctl.clone(), fleet.cloned());
                    tokio::spawn(async move {
                        if let Err(e) = socket::serve(stream, ctl, fleet, socket::Access::ROOT).await {
                            warn!("api connection: {e:#}");
                        }
                    });
                }
                Err(e) => warn!("accept on API socket: {e}"),
            },
            // In fleet mode a reload waits for every host: not on the loop that serves.
            _ = sighup.recv() => {
                let (ctl, fleet) = (ctl.clone(), fleet.cloned());
                tokio::spawn(async move {
                    match crate::fleet::route::reload(fleet.as_ref(), &ctl, "signal:SIGHUP").await {
                        Ok(s) => info!("reloaded on SIGHUP: {s}"),
                        Err(e) => warn!("reload on SIGHUP refused, nothing changed: {e:#}"),
                    }
                });
            }
            _ = sigint.recv() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
        }
    }
}

/// Stops the HTTP listener however serving ends.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}

/// Binds the HTTP listener, then sets up its token, and serves it in a task.
async fn start_web(
    addr: std::net::SocketAddr,
    ctl: &Controller,
    fleet: Option<&Fleet>,
    serving: &Serving,
) -> Result<tokio::task::JoinHandle<()>> {
    let mut server = web::Server::bind(addr, ctl.clone(), &serving.maps_dir).await?;
    server.set_fleet(fleet.cloned());
    server.set_interfaces(serving.interfaces.clone());
    let token =
        web::auth::load_or_generate(serving.http.token_file.as_deref(), &serving.state_dir)?;
    server.set_token(token.value.clone());
    let addr = server.local_addr()?;
    info!(%addr, "metrics at http://{addr}/metrics, dashboard at http://{addr}/");
    if token.generated {
        // On a terminal the token is shown once; under a service manager stdout goes to a
        // journal others may read, so only its 0600 file is named.
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            println!(
                "dashboard token (for promote/flip/rollback): {} (stored in {})",
                token.value,
                token.path.display()
            );
        } else {
            info!(file = %token.path.display(), "dashboard token generated");
        }
    }
    Ok(tokio::spawn(async move {
        if let Err(e) = server.serve().await {
            warn!("{e:#}");
        }
    }))
}
