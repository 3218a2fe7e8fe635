//! Listeners: binding the UDP, TCP and HTTP sockets, receiving datagrams and TCP connections,
//! and acking TCP messages (`--ack`, with the injected ack delay).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
};
use tracing::{debug, warn};

use crate::{
    fault::Faults,
    framing::{datagram_lines, Framer},
    metrics::{ConnectionGuard, SinkState, Transport},
    writer::Batch,
    LOG_TARGET,
};

const READ_BUF: usize = 64 * 1024;
/// Largest UDP payload plus slack, so no datagram is ever truncated.
const UDP_BUF: usize = 64 * 1024;
/// Output bytes gathered from queued datagrams before handing them to the writer.
const UDP_BATCH: usize = 256 * 1024;

/// Creates a non-blocking socket for `addr`; IPv6 sockets are V6ONLY so an
/// IPv4 and an IPv6 listener can share a port.
fn new_socket(addr: SocketAddr, ty: Type, proto: Protocol) -> std::io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    Ok(sock)
}

pub(crate) fn bind_udp(addr: SocketAddr, rcvbuf: usize) -> Result<UdpSocket> {
    let sock = new_socket(addr, Type::DGRAM, Protocol::UDP)
        .with_context(|| format!("creating UDP socket for {addr}"))?;
    set_rcvbuf(&sock, rcvbuf, addr);
    sock.bind(&addr.into())
        .with_context(|| format!("binding UDP {addr}"))?;
    UdpSocket::from_std(sock.into()).with_context(|| format!("registering UDP {addr}"))
}

/// SO_RCVBUF is capped by net.core.rmem_max; when privileged (the lab runs
/// as root) SO_RCVBUFFORCE gets the full size without touching sysctls.
fn set_rcvbuf(sock: &Socket, bytes: usize, addr: SocketAddr) {
    use nix::sys::socket::{setsockopt, sockopt::RcvBufForce};
    if setsockopt(sock, RcvBufForce, &bytes).is_err() {
        if let Err(e) = sock.set_recv_buffer_size(bytes) {
            warn!(target: LOG_TARGET, %addr, "setting SO_RCVBUF to {bytes}: {e}");
        }
    }
    // The kernel reports twice the usable size; compare against that.
    match sock.recv_buffer_size() {
        Ok(got) if got < bytes.saturating_mul(2) => warn!(target: LOG_TARGET,
            %addr,
            "UDP receive buffer is {got} bytes (asked {bytes}); raise net.core.rmem_max"
        ),
        Ok(got) => debug!(target: LOG_TARGET, %addr, "UDP receive buffer {got} bytes"),
        Err(e) => warn!(target: LOG_TARGET, %addr, "reading SO_RCVBUF: {e}"),
    }
}

pub(crate) fn bind_tcp(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    let sock = new_socket(addr, Type::STREAM, Protocol::TCP)
        .with_context(|| format!("creating {what} socket for {addr}"))?;
    // Lets a restarted sink rebind while old connections sit in TIME_WAIT.
    sock.set_reuse_address(true)
        .with_context(|| format!("setting SO_REUSEADDR on {what} {addr}"))?;
    sock.bind(&addr.into())
        .with_context(|| format!("binding {what} {addr}"))?;
    sock.listen(1024)
        .with_context(|| format!("listening on {what} {addr}"))?;
    TcpListener::from_std(sock.into()).with_context(|| format!("registering {what} {addr}"))
}

pub(crate) async fn serve_udp(sock: UdpSocket, addr: SocketAddr, tx: mpsc::Sender<Batch>) {
    let mut buf = vec![0u8; UDP_BUF];
    loop {
        let mut failed = None;
        if let Err(e) = sock.readable().await {
            failed = Some(e);
        }
        // Take everything already queued (up to a bound) in one batch: under a
        // burst that is one channel send per batch, not per datagram.
        let mut batch = Batch::new(Transport::Udp);
        while failed.is_none() && batch.data.len() < UDP_BATCH {
            match sock.try_recv(&mut buf) {
                Ok(len) => datagram_lines(&buf[..len]).for_each(|line| batch.add(line)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => failed = Some(e),
            }
        }
        if batch.messages > 0 && tx.send(batch).await.is_err() {
            return; // writer gone: shutting down
        }
        if let Some(e) = failed {
            warn!(target: LOG_TARGET, %addr, "UDP receive: {e}");
            // Don't spin if the error persists.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

pub(crate) async fn serve_tcp(
    listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<SinkState>,
    tx: mpsc::Sender<Batch>,
    ack: bool,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(handle_connection(
                    stream,
                    peer,
                    shared.clone(),
                    tx.clone(),
                    ack,
                ));
            }
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning on accept.
                warn!(target: LOG_TARGET, %addr, "TCP accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<SinkState>,
    tx: mpsc::Sender<Batch>,
    ack: bool,
) {
    let _open = ConnectionGuard::new(&shared.tcp_connections);
    debug!(target: LOG_TARGET, %peer, "TCP connection opened");
    // Acks are tiny writes; Nagle would hold them back and skew latency probes.
    if let Err(e) = stream.set_nodelay(true) {
        debug!(target: LOG_TARGET, %peer, "TCP_NODELAY: {e}");
    }
    let mut framer = Framer::default();
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let len = match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(len) => len,
            Err(e) => {
                debug!(target: LOG_TARGET, %peer, "TCP read: {e}");
                return;
            }
        };
        let (messages, error) = match framer.push(&buf[..len]) {
            Ok(messages) => (messages, None),
            Err(e) => (e.parsed, Some(e.kind)),
        };
        if let Err(e) = deliver(&mut stream, &messages, &tx, ack, &shared.faults).await {
            debug!(target: LOG_TARGET, %peer, "{e:#}");
            return;
        }
        if let Some(kind) = error {
            shared.frame_errors.inc();
            warn!(target: LOG_TARGET, %peer, "closing TCP connection: {kind}");
            return;
        }
    }
    let tail = match framer.finish() {
        Ok(tail) => tail,
        Err(kind) => {
            shared.frame_errors.inc();
            warn!(target: LOG_TARGET, %peer, "TCP connection ended badly: {kind}");
            None
        }
    };
    if let Err(e) = deliver(&mut stream, tail.as_slice(), &tx, ack, &shared.faults).await {
        debug!(target: LOG_TARGET, %peer, "{e:#}");
    }
    debug!(target: LOG_TARGET, %peer, "TCP connection closed");
}

/// Queues messages for the output file and, in ack mode, acks each one (after
/// the injected ack delay, if any).
async fn deliver(
    stream: &mut TcpStream,
    messages: &[Vec<u8>],
    tx: &mpsc::Sender<Batch>,
    ack: bool,
    faults: &Faults,
) -> Result<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let mut batch = Batch::new(Transport::Tcp);
    for msg in messages {
        batch.add(msg);
    }
    tx.send(batch)
        .await
        .map_err(|_| anyhow::anyhow!("output writer has stopped"))?;
    if ack {
        // Sleeping here also stops reading this connection meanwhile: like a
        // really slow ingest, the sender's writes back up too.
        let delay = faults.ack_delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        stream
            .write_all(&b"ok\n".repeat(messages.len()))
            .await
            .context("writing ack")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    use crate::{fault::FaultSettings, framing::tests::msgs};

    #[tokio::test]
    async fn ack_delay_holds_back_acks() -> Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let mut client = TcpStream::connect(listener.local_addr()?).await?;
        let (mut server, _) = listener.accept().await?;
        let faults = Faults::new(FaultSettings {
            ack_delay_ms: 80,
            ..FaultSettings::default()
        });
        let (tx, mut rx) = mpsc::channel(4);
        let start = Instant::now();
        deliver(&mut server, &msgs(&["a", "b"]), &tx, true, &faults).await?;
        assert!(start.elapsed() >= Duration::from_millis(80));
        let mut acks = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(2), client.read_exact(&mut acks)).await??;
        assert_eq!(&acks, b"ok\nok\n");
        assert_eq!(rx.recv().await.map(|b| b.messages), Some(2));

        // No delay configured: acked right away.
        faults.set(FaultSettings::default());
        let start = Instant::now();
        deliver(&mut server, &msgs(&["c"]), &tx, true, &faults).await?;
        assert!(start.elapsed() < Duration::from_millis(80));
        Ok(())
    }
}
