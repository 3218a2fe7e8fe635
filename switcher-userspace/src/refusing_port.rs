//! For tests: loopback addresses that refuse traffic for as long as they are held.
//!
//! A port bound and closed again promises nothing: a parallel test's listener may take it, or
//! a connect may pick it as its source port and connect to itself. Holding a socket on the
//! port keeps it from every bind to port 0 while the socket itself never accepts.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket, UdpSocket};

const LOOPBACK: ([u8; 4], u16) = ([127, 0, 0, 1], 0);

/// A TCP port bound but not listening: a SYN to it is answered with a reset. SO_REUSEADDR
/// lets a test's own listener bind the same port beside it (tokio sets it on listeners too):
/// the port serves while that listener lives and refuses again once it is gone, never free
/// for another test in between.
pub(crate) struct RefusingPort {
    _socket: TcpSocket,
    pub addr: SocketAddr,
}

impl RefusingPort {
    pub fn bind() -> std::io::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::from(LOOPBACK))?;
        let addr = socket.local_addr()?;
        Ok(Self {
            _socket: socket,
            addr,
        })
    }

    /// A listener on the held port.
    pub async fn listen(&self) -> std::io::Result<TcpListener> {
        TcpListener::bind(self.addr).await
    }
}

/// A UDP port whose socket is connected to another port: the kernel delivers only that
/// peer's datagrams to it and answers everyone else with port unreachable.
pub(crate) struct RefusingUdpPort {
    _socket: UdpSocket,
    pub addr: SocketAddr,
}

impl RefusingUdpPort {
    pub async fn bind() -> std::io::Result<Self> {
        let socket = UdpSocket::bind(SocketAddr::from(LOOPBACK)).await?;
        // Port 9 (discard): no test sends from it.
        socket
            .connect(SocketAddr::from(([127, 0, 0, 1], 9)))
            .await?;
        let addr = socket.local_addr()?;
        Ok(Self {
            _socket: socket,
            addr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_refuses_while_held_serves_while_a_listener_lives_and_is_never_free() {
        let p = RefusingPort::bind().expect("bind");
        let refused = || async {
            let e = tokio::net::TcpStream::connect(p.addr)
                .await
                .expect_err("nothing listens");
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
        };
        refused().await;
        let l = p.listen().await.expect("a listener beside the hold");
        tokio::net::TcpStream::connect(p.addr)
            .await
            .expect("served");
        drop(l);
        refused().await;
        // Only a socket that also asks for SO_REUSEADDR, binding this very port, shares it.
        let other = TcpSocket::new_v4().expect("socket");
        let taken = other.bind(p.addr).expect_err("the port is held");
        assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse);
    }

    #[tokio::test]
    async fn udp_datagrams_are_refused_while_held_and_the_port_cannot_be_bound() {
        let p = RefusingUdpPort::bind().await.expect("bind");
        let s = UdpSocket::bind(SocketAddr::from(LOOPBACK))
            .await
            .expect("sender");
        s.connect(p.addr).await.expect("connect");
        s.send(b"x").await.expect("the first send leaves");
        // The port unreachable comes back asynchronously, as the error of a later call.
        let e = tokio::time::timeout(std::time::Duration::from_secs(2), s.recv(&mut [0; 8]))
            .await
            .expect("an answer within 2 s")
            .expect_err("refused");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
        let taken = UdpSocket::bind(p.addr).await.expect_err("the port is held");
        assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse);
    }
}
