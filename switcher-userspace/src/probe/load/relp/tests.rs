//! The RELP session against a local RELP server speaking as librelp does, and the frame
//! reader against every way a frame can be cut or broken.
use std::{net::Ipv4Addr, net::SocketAddr};

use tokio::net::TcpListener;

use super::*;
use crate::probe::load::{run, LoadProtocol, LoadSpec};

#[test]
fn frames_are_read_whole_or_not_at_all() {
    let buf = b"1 rsp 6 200 OK\n4 rsp 0\n0 serverclose 0\n";
    let (f, used) = parse_frame(buf).expect("valid").expect("complete");
    assert_eq!(
        (f.txnr, f.command.as_str(), &f.data[..]),
        (1, "rsp", &b"200 OK"[..])
    );
    let (f, used2) = parse_frame(&buf[used..]).expect("valid").expect("complete");
    assert_eq!((f.txnr, f.command.as_str(), f.data.len()), (4, "rsp", 0));
    let (f, _) = parse_frame(&buf[used + used2..])
        .expect("valid")
        .expect("complete");
    assert_eq!(f.command, "serverclose");
    // A frame cut anywhere is incomplete, not an error.
    let whole = b"12 rsp 6 200 OK\n";
    for cut in 0..whole.len() {
        assert_eq!(parse_frame(&whole[..cut]), Ok(None), "cut at {cut}");
    }
    for bad in [
        &b"x rsp 0\n"[..],
        b"1 r5p 0\n",
        b"1 rsp 3 abcd\n",
        b"1 rsp 2\n",
        b"1234567890 rsp 0\n",
        b"1  rsp 0\n",
        b"1 rsp 99999999 ",
    ] {
        assert!(
            parse_frame(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn transaction_numbers_wrap_to_one() {
    assert_eq!(next_txnr(2), 3);
    assert_eq!(next_txnr(MAX_TXNR), 1);
}

/// How the local RELP server answers `syslog` commands.
#[derive(Clone, Copy)]
enum Server {
    Ok,
    Refuse,
    Silent,
    CloseAfter(u64),
}

/// A local RELP server: answers `open` like librelp, then each `syslog` as told; returns
/// its address and the `syslog` messages it received.
async fn server(mode: Server) -> (SocketAddr, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (s, _) = l.accept().await.expect("accept");
        let (rd, mut wr) = s.into_split();
        let mut r = Reader {
            rd,
            buf: Vec::new(),
        };
        let mut got = Vec::new();
        while let Ok(f) = r.next().await {
            let reply = match (f.command.as_str(), mode) {
                ("open", _) => {
                    let d = "200 OK\nrelp_version=0\nrelp_software=test\ncommands=syslog";
                    format!("{} rsp {} {d}\n", f.txnr, d.len())
                }
                ("close", _) => format!("{} rsp 0\n0 serverclose 0\n", f.txnr),
                ("syslog", Server::Ok) => format!("{} rsp 6 200 OK\n", f.txnr),
                ("syslog", Server::Refuse) => format!("{} rsp 8 500 full\n", f.txnr),
                ("syslog", Server::Silent) => String::new(),
                ("syslog", Server::CloseAfter(n)) if got.len() as u64 >= n => {
                    "0 serverclose 0\n".to_owned()
                }
                ("syslog", Server::CloseAfter(_)) => format!("{} rsp 6 200 OK\n", f.txnr),
                _ => String::new(),
            };
            if f.command == "syslog" {
                got.push(f.data);
            }
            if wr.write_all(reply.as_bytes()).await.is_err() {
                break;
            }
        }
        got
    });
    (addr, task)
}

fn spec(lines: u64, timeout: Duration) -> LoadSpec {
    LoadSpec {
        protocol: LoadProtocol::Relp,
        lines,
        rate: 0,
        line_size: 100,
        connections: 1,
        ack: false,
        timeout,
    }
}

#[tokio::test]
async fn every_message_answered_is_acked_with_its_latency() {
    let (addr, task) = server(Server::Ok).await;
    let r = run(addr, &spec(500, Duration::from_secs(5))).await;
    assert_eq!((r.sent, r.acked, r.errors), (500, 500, 0), "{r:?}");
    assert_eq!(r.latency_kind, "write_to_rsp");
    assert_eq!(r.latency.count, 500);
    let got = task.await.expect("server");
    assert_eq!(got.len(), 500);
    assert!(
        got[7].starts_with(LINE_PREFIX),
        "{:?}",
        String::from_utf8_lossy(&got[7])
    );
    assert!(
        got[7].windows(6).any(|w| w == b"seq=7 "),
        "the 8th line is seq 7"
    );
}

#[tokio::test]
async fn refusals_a_silent_collector_and_a_serverclose_are_errors() {
    let (addr, _t) = server(Server::Refuse).await;
    let r = run(addr, &spec(20, Duration::from_secs(5))).await;
    assert_eq!((r.acked, r.errors), (0, 20), "{r:?}");
    assert!(
        r.first_error.as_deref().unwrap_or("").contains("500 full"),
        "{r:?}"
    );

    // Nothing answered: the window fills and the run ends at its timeout, bounded.
    let (addr, _t) = server(Server::Silent).await;
    let t0 = Instant::now();
    let r = run(addr, &spec(WINDOW as u64 + 50, Duration::from_millis(500))).await;
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "bounded: {:?}",
        t0.elapsed()
    );
    assert_eq!(r.acked, 0);
    assert_eq!(r.sent, WINDOW as u64, "no more than a window unanswered");
    assert_eq!(r.errors, WINDOW as u64 + 50);
    assert!(
        r.first_error.as_deref().unwrap_or("").contains("timeout"),
        "{r:?}"
    );

    let (addr, _t) = server(Server::CloseAfter(10)).await;
    let r = run(addr, &spec(40, Duration::from_secs(5))).await;
    assert_eq!((r.acked, r.errors), (10, 30), "{r:?}");
    assert!(
        r.first_error
            .as_deref()
            .unwrap_or("")
            .contains("serverclose"),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_collector_that_is_not_relp_fails_the_open() {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let _t = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.expect("accept");
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let r = run(addr, &spec(5, Duration::from_secs(2))).await;
    assert_eq!((r.sent, r.errors), (0, 5));
    assert!(
        r.first_error.as_deref().unwrap_or("").contains("RELP"),
        "{r:?}"
    );
}
