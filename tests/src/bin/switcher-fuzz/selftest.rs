//! The judge judged, before every run: its checksum code and the generator's builder agree
//! with etherparse, and it catches every kind of wrong rewrite it exists to catch (on
//! hand-made outputs, no datapath involved). A fuzz whose oracle accepted anything would pass
//! forever.

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, ensure, Context as _, Result};
use etherparse::PacketBuilder;
use switcher::domain::Color;

use crate::{
    checksum,
    oracle::{self, Oracle, Outcome, Verdict, XDP_PASS},
    wire,
    world::{Service, World},
};

pub fn run() -> Result<()> {
    agrees_with_etherparse()?;
    catches_wrong_rewrites()
}

/// The oracle's checksum code and the generator's packet builder against etherparse: both
/// must agree with its bytes and checksums.
fn agrees_with_etherparse() -> Result<()> {
    let payload = b"<14>1 2026-11-24T00:00:00Z client app - - - self test";
    for v6 in [false, true] {
        for tcp in [false, true] {
            let eth = PacketBuilder::ethernet2(wire::MAC_CLIENT, wire::MAC_EDGE);
            let mut v = Vec::new();
            let (src4, dst4) = ([198, 18, 0, 1], [198, 18, 10, 10]);
            let (src6, dst6) = (
                [0x20, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [0x20, 1, 0, 2, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0x10],
            );
            match (v6, tcp) {
                (false, false) => eth
                    .ipv4(src4, dst4, 64)
                    .udp(40000, 514)
                    .write(&mut v, payload),
                (false, true) => eth
                    .ipv4(src4, dst4, 64)
                    .tcp(40000, 601, 1, 1000)
                    .syn()
                    .write(&mut v, payload),
                (true, false) => eth
                    .ipv6(src6, dst6, 64)
                    .udp(40000, 514)
                    .write(&mut v, payload),
                (true, true) => eth
                    .ipv6(src6, dst6, 64)
                    .tcp(40000, 601, 1, 1000)
                    .syn()
                    .write(&mut v, payload),
            }
            .context("etherparse builds")?;
            let ip =
                oracle::read_ip(&v, oracle::Mode::Rfc).map_err(|why| anyhow::anyhow!("{why}"))?;
            let proto = if tcp { wire::TCP } else { wire::UDP };
            let ph = checksum::pseudo(
                &v[ip.src_at..ip.dst_at],
                &v[ip.dst_at..ip.dst_at + (ip.dst_at - ip.src_at)],
                proto,
                ip.ip_end - ip.l4,
            );
            ensure!(
                checksum::sum(&[&ph, &v[ip.l4..ip.ip_end]]) == 0xffff,
                "our transport checksum disagrees with etherparse's (v6 {v6}, tcp {tcp})"
            );
            if !v6 {
                ensure!(
                    checksum::sum(&[&v[ip.l3..ip.l3 + ip.ihl]]) == 0xffff,
                    "our IPv4 header checksum disagrees with etherparse's"
                );
            }
            // The generator's own builder writes the same bytes as etherparse.
            let (src, dst) = if v6 {
                (src6.to_vec(), dst6.to_vec())
            } else {
                (src4.to_vec(), dst4.to_vec())
            };
            let mut w = wire::Ip::new(src, dst);
            w.ttl = 64;
            let seg = if tcp {
                let spec = wire::TcpSpec {
                    sport: 40000,
                    dport: 601,
                    seq: 1,
                    ack: 0,
                    flags: 0x02,
                    window: 1000,
                    options: &[],
                    payload,
                };
                wire::tcp(&w, &spec, wire::Csum::Valid)
            } else {
                wire::udp(&w, 40000, 514, payload, wire::Csum::Valid)
            };
            let ours = &wire::ip_packet(&w, proto, &seg);
            ensure!(
                ours[ip.l4 - ip.l3..] == v[ip.l4..],
                "our {} segment differs from etherparse's",
                if tcp { "TCP" } else { "UDP" }
            );
        }
    }
    Ok(())
}

fn udp4(dst: [u8; 4], dport: u16, mode: wire::Csum) -> Vec<u8> {
    let mut ip = wire::Ip::new(vec![198, 18, 0, 7], dst.to_vec());
    ip.id = 0x1234;
    let seg = wire::udp(&ip, 40000, dport, b"<14>1 self test", mode);
    let mut v = wire::ethernet(&[(0x8100, 7)], wire::ETH_IP4);
    v.extend(wire::ip_packet(&ip, wire::UDP, &seg));
    // Ethernet padding: never part of the packet, never to be touched.
    v.extend([0; 6]);
    v
}

fn catches_wrong_rewrites() -> Result<()> {
    let vip = [198, 18, 10, 10];
    let (blue, green) = ([198, 18, 1, 2], [198, 18, 2, 2]);
    let world = World {
        services: vec![Service {
            name: "self-test".into(),
            id: 0,
            vip: IpAddr::from(vip),
            port: 514,
            tcp: false,
            affinity: false,
            active: Color::Blue,
            members: [
                vec![SocketAddr::from((blue, 5514))],
                vec![SocketAddr::from((green, 6514))],
            ],
        }],
    };
    let mut o = Oracle::new(&world);
    let valid = wire::Csum::Valid;
    let input = udp4(vip, 514, valid);
    let right = udp4(blue, 5514, valid);
    let l3 = 18;
    let l4 = l3 + 20;
    ensure!(
        matches!(
            o.ingress(&input, &right, XDP_PASS),
            Verdict::Ok(Outcome::Rewritten)
        ),
        "the right rewrite: refused"
    );
    let mut judge = |name: &str, inp: &[u8], out: &[u8], want_ok: bool| -> Result<()> {
        let v = o.ingress(inp, out, XDP_PASS);
        let ok = matches!(v, Verdict::Ok(_));
        if ok != want_ok {
            bail!("{name}: the oracle said {v:?}");
        }
        Ok(())
    };
    judge(
        "a sound packet to a service left alone",
        &input,
        &input,
        false,
    )?;
    judge(
        "the idle colour's member",
        &input,
        &udp4(green, 6514, valid),
        false,
    )?;
    judge(
        "a member's address with another port",
        &input,
        &udp4(blue, 5515, valid),
        false,
    )?;
    let mut bad = right.clone();
    bad[l4 + 7] ^= 1;
    judge("a transport checksum off by one", &input, &bad, false)?;
    let mut bad = right.clone();
    bad[l3 + 11] ^= 1;
    judge("an IPv4 header checksum off by one", &input, &bad, false)?;
    let mut bad = right.clone();
    *bad.last_mut().context("padding")? = 1;
    judge("padding touched", &input, &bad, false)?;
    let mut bad = right.clone();
    bad[l3 + 8] -= 1;
    let lay = wire::layout(&bad).context("layout")?;
    wire::fix_ipv4_checksum(&mut bad, &lay);
    judge("the TTL changed", &input, &bad, false)?;
    // A length that lies: the input must pass untouched, any rewrite is wrong.
    let mut lying = input.clone();
    lying[l4 + 5] += 2;
    let mut lying_out = right.clone();
    lying_out[l4 + 5] += 2;
    judge("a lying UDP length rewritten", &lying, &lying_out, false)?;
    judge("a lying UDP length passed", &lying, &lying, true)?;
    // A wrong checksum must stay wrong by the same amount, not be recomputed.
    let wrong = wire::Csum::Wrong(5);
    judge(
        "a wrong checksum recomputed",
        &udp4(vip, 514, wrong),
        &right,
        false,
    )?;
    judge(
        "a wrong checksum patched",
        &udp4(vip, 514, wrong),
        &udp4(blue, 5514, wrong),
        true,
    )?;
    // Zero (no checksum) stays zero.
    let zero = wire::Csum::Zero;
    judge(
        "zero checksum kept",
        &udp4(vip, 514, zero),
        &udp4(blue, 5514, zero),
        true,
    )?;
    judge(
        "zero checksum filled in",
        &udp4(vip, 514, zero),
        &right,
        false,
    )?;
    // And the reading agrees that etherparse's own packets are sound.
    ensure!(
        oracle::read_ip(&input, oracle::Mode::Rfc).is_ok(),
        "the oracle's reading refuses a sound packet"
    );
    Ok(())
}
