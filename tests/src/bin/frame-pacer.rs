//! Sends one prepared Ethernet frame, over and over, at a steady rate: the forwarding
//! benchmark's generator.
//!
//! trafgen's `-b` paces per second (each second's packets leave in one burst), so the receive
//! path sees bursts at line speed and idle gaps, and what a contender costs depends on where a
//! burst's queue overflows. This sends on a schedule of short ticks instead: at every tick
//! (1 ms by default) the frames due by then, in `sendmmsg` batches on a packet socket that
//! bypasses the qdisc. A tick that comes late sends what it owes, so the average rate holds.
//!
//! With `--xdp-live PIN` the frames are not written to a socket: the pinned XDP program
//! (`bench_tx`, returning XDP_TX) runs under BPF_PROG_TEST_RUN in live-frames mode with the
//! interface as its ingress, which sends every frame out of that interface as an XDP frame.
//! A veth peer then receives it as a NIC driver receives a buffer: an XDP program on the peer
//! runs on it directly, and without one the peer builds the skb. From a packet socket the peer
//! gets an skb, and an XDP program there first costs a copy into a page with XDP headroom.
//!
//! Bounded by `--count` and `--max-secs`. Prints one JSON line when done: frames sent, frames
//! the interface refused (not sent again: the benchmark counts what left the client), the
//! time it took and how late the ticks were.

use std::{
    mem::{size_of, zeroed},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Interface to send on (in the caller's network namespace).
    #[arg(long)]
    dev: String,
    /// File holding the whole frame, Ethernet header first.
    #[arg(long)]
    frame: std::path::PathBuf,
    /// Frames to send in all.
    #[arg(long)]
    count: u64,
    /// Frames per second.
    #[arg(long)]
    pps: u64,
    /// Tick length in microseconds.
    #[arg(long, default_value_t = 1000)]
    tick_us: u64,
    /// Stop after this long even if `count` is not reached.
    #[arg(long, default_value_t = 60.0)]
    max_secs: f64,
    /// Send as XDP frames through this pinned XDP program (see above).
    #[arg(long, value_name = "PIN")]
    xdp_live: Option<std::path::PathBuf>,
}

/// Most frames handed to the kernel in one call (sendmmsg takes at most UIO_MAXIOV).
const BATCH: usize = 256;

struct Socket(libc::c_int);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

fn packet_socket(dev: &str) -> Result<(Socket, libc::sockaddr_ll)> {
    let name = std::ffi::CString::new(dev).context("interface name")?;
    // SAFETY: plain FFI calls with valid arguments; results checked.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {dev}: {}", std::io::Error::last_os_error());
    }
    // Protocol 0: the socket receives nothing, so it costs nothing on the receive path.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        bail!("packet socket: {}", std::io::Error::last_os_error());
    }
    let sock = Socket(fd);
    let one: libc::c_int = 1;
    // Straight to the driver, as trafgen does: no qdisc cost or queueing in the measurement.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("PACKET_QDISC_BYPASS: {}", std::io::Error::last_os_error());
    }
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    addr.sll_ifindex = i32::try_from(ifindex).context("ifindex")?;
    Ok((sock, addr))
}

#[derive(Default)]
struct Tally {
    sent: u64,
    refused: u64,
    ticks: u64,
    late_ticks: u64,
    max_late_us: f64,
}

/// Frames out of a packet socket, `sendmmsg` batches of the same bytes.
struct SocketSender {
    sock: Socket,
    // Boxed: the message headers point at them.
    _frame: Box<[u8]>,
    _iov: Box<libc::iovec>,
    _addr: Box<libc::sockaddr_ll>,
    msgs: Vec<libc::mmsghdr>,
}

impl SocketSender {
    fn new(dev: &str, frame: &[u8]) -> Result<SocketSender> {
        let (sock, addr) = packet_socket(dev)?;
        let frame: Box<[u8]> = frame.into();
        let mut addr = Box::new(addr);
        let mut iov = Box::new(libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        });
        let msgs = (0..BATCH)
            .map(|_| {
                // SAFETY: mmsghdr is plain data; all-zero is valid before the fields are set.
                let mut m: libc::mmsghdr = unsafe { zeroed() };
                m.msg_hdr.msg_name = (&mut *addr as *mut libc::sockaddr_ll).cast();
                m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                m.msg_hdr.msg_iov = &mut *iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        Ok(SocketSender {
            sock,
            _frame: frame,
            _iov: iov,
            _addr: addr,
            msgs,
        })
    }

    fn send(&mut self, mut owed: u64, t: &mut Tally) -> Result<()> {
        while owed > 0 {
            let n = owed.min(BATCH as u64) as usize;
            // SAFETY: `msgs` holds `n` initialised headers pointing at boxed, live buffers.
            let rc = unsafe { libc::sendmmsg(self.sock.0, self.msgs.as_mut_ptr(), n as u32, 0) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    // The peer's queue is full: this frame is lost at the client, move on.
                    Some(libc::ENOBUFS) | Some(libc::EAGAIN) => {
                        t.refused += 1;
                        owed -= 1;
                        continue;
                    }
                    Some(libc::EINTR) => continue,
                    _ => return Err(e).context("sendmmsg"),
                }
            }
            // A short count means the next frame failed; the next call reports why.
            t.sent += rc as u64;
            owed -= rc as u64;
        }
        Ok(())
    }
}

/// Frames as XDP frames: `bench_tx` run in live-frames mode on the interface.
struct LiveSender {
    prog: aya::programs::Xdp,
    frame: Vec<u8>,
    /// `struct xdp_md`: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    /// egress_ifindex. The kernel wants data 0 and data_end the frame's length.
    ctx: [u8; 24],
}

impl LiveSender {
    fn new(pin: &std::path::Path, dev: &str, frame: &[u8]) -> Result<LiveSender> {
        let prog = aya::programs::Xdp::from_pin(pin, aya_obj::programs::XdpAttachType::Interface)
            .with_context(|| format!("opening the pinned program {}", pin.display()))?;
        let name = std::ffi::CString::new(dev).context("interface name")?;
        // SAFETY: plain FFI call with a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            bail!("no interface {dev}: {}", std::io::Error::last_os_error());
        }
        let mut ctx = [0u8; 24];
        let len = u32::try_from(frame.len()).context("frame length")?;
        ctx[4..8].copy_from_slice(&len.to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        Ok(LiveSender {
            prog,
            frame: frame.to_vec(),
            ctx,
        })
    }

    fn send(&mut self, owed: u64, t: &mut Tally) -> Result<()> {
        use aya::programs::{TestRun, TestRunAttrs, TestRunOptions};
        if owed == 0 {
            return Ok(());
        }
        let opts = TestRunOptions {
            data_in: Some(&self.frame),
            ctx_in: Some(&self.ctx),
            repeat: u32::try_from(owed).context("frames per tick")?,
            // The kernel's default batch (64 frames per redirect flush), as a driver's NAPI.
            attrs: TestRunAttrs::new().xdp_live_frames(0),
            ..TestRunOptions::default()
        };
        self.prog
            .test_run(opts)
            .context("BPF_PROG_TEST_RUN in live-frames mode")?;
        // Live frames report nothing per frame: a frame the peer's ring refused is counted
        // as loss at the backend.
        t.sent += owed;
        Ok(())
    }
}

enum Sender {
    Socket(SocketSender),
    Live(Box<LiveSender>),
}

impl Sender {
    fn send(&mut self, owed: u64, t: &mut Tally) -> Result<()> {
        match self {
            Sender::Socket(s) => s.send(owed, t),
            Sender::Live(s) => s.send(owed, t),
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.pps == 0 || args.tick_us == 0 {
        bail!("--pps and --tick-us must be positive");
    }
    let frame =
        std::fs::read(&args.frame).with_context(|| format!("reading {}", args.frame.display()))?;
    if frame.len() < 14 {
        bail!("{} is no Ethernet frame", args.frame.display());
    }
    if args.xdp_live.is_some() && frame.len() < 64 {
        // bench_tx rewrites the first 64 bytes and refuses a shorter frame.
        bail!("--xdp-live needs a frame of at least 64 bytes");
    }
    let mut sender = match &args.xdp_live {
        Some(pin) => Sender::Live(Box::new(LiveSender::new(pin, &args.dev, &frame)?)),
        None => Sender::Socket(SocketSender::new(&args.dev, &frame)?),
    };

    let tick = Duration::from_micros(args.tick_us);
    let limit = Duration::try_from_secs_f64(args.max_secs)
        .with_context(|| format!("--max-secs {}", args.max_secs))?;
    let start = Instant::now();
    let mut t = Tally::default();
    let mut next = start;
    while t.sent + t.refused < args.count {
        let now = Instant::now();
        if now - start >= limit {
            break;
        }
        let elapsed = (now - start).as_secs_f64();
        // How far behind the straight line the sender is: a tick's frames are due at most
        // one tick ago; more means the last tick's sending (or the sleep) overran.
        let handled = t.sent + t.refused;
        let late = (elapsed - handled as f64 / args.pps as f64) * 1e6 - args.tick_us as f64;
        if late > args.tick_us as f64 {
            t.late_ticks += 1;
        }
        t.max_late_us = t.max_late_us.max(late);
        t.ticks += 1;
        // Frames due by now on a straight line from the start.
        let due = (elapsed * args.pps as f64) as u64;
        let owed = due.min(args.count).saturating_sub(handled);
        sender.send(owed, &mut t)?;
        next += tick;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            // Behind: tick again at once. `due` follows the straight line from the start, so
            // the frames owed go out.
            next = now;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "sent": t.sent,
            "refused": t.refused,
            "seconds": secs,
            "pps": t.sent as f64 / secs.max(1e-9),
            "ticks": t.ticks,
            "late_ticks": t.late_ticks,
            "max_late_us": t.max_late_us,
        })
    );
    drop(sender);
    Ok(())
}
