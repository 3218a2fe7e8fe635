//! A real etcd server on loopback for the fleet's host tests: its own data folder and free
//! ports, stopped (and its folder removed) on drop.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::refusing_port::RefusingPort;

const ETCD: &str = "/usr/bin/etcd";

pub struct EtcdProc {
    child: Option<Child>,
    dir: PathBuf,
    pub client_port: u16,
    peer_port: u16,
    /// The two ports, held for the server's whole life, also while it is stopped: a released
    /// port could be taken by a parallel test before etcd binds it. Go sets SO_REUSEADDR on
    /// its listeners, so etcd binds beside the holds.
    _held: [RefusingPort; 2],
}

impl EtcdProc {
    /// Starts etcd and waits until it serves. Fails (in CI and out) when etcd is missing:
    /// `cargo xtask setup` installs it.
    pub async fn start(tag: &str) -> EtcdProc {
        assert!(
            std::path::Path::new(ETCD).exists(),
            "{ETCD} is missing: run `cargo xtask setup` (Debian package etcd-server)"
        );
        let client = RefusingPort::bind().expect("a free loopback port");
        let peer = RefusingPort::bind().expect("a free loopback port");
        let (client_port, peer_port) = (client.addr.port(), peer.addr.port());
        let dir = std::env::temp_dir().join(format!(
            "switcher-etcd-{tag}-{}-{client_port}",
            std::process::id(),
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("etcd dir");
        let mut e = EtcdProc {
            child: None,
            dir,
            client_port,
            peer_port,
            _held: [client, peer],
        };
        e.resume().await;
        e
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Kills the server (its data stays for [`EtcdProc::resume`]).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same data and ports; waits until it serves.
    pub async fn resume(&mut self) {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.join("etcd.log")).expect("etcd log");
        let child = Command::new(ETCD)
            .args(["--name", "t"])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting etcd");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if let Ok(Ok(mut c)) = tokio::time::timeout(
                Duration::from_millis(500),
                etcd_client::Client::connect([client.as_str()], None),
            )
            .await
            {
                if c.get("probe", None).await.is_ok() {
                    return;
                }
            }
            let log = || std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("etcd exited ({status}) before serving: {}", log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "etcd did not serve within 20 s: {}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint()], None)
            .await
            .expect("etcd client")
    }
}

impl Drop for EtcdProc {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
