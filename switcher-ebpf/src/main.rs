//! switcher datapath. `ingress` (XDP) steers service traffic to the blue or green backend and
//! rewrites its destination; `egress` (TC) gives replies the VIP back; `shadow` (TC ingress)
//! copies a share of a service's packets to its candidate while it is validated. Everything else passes
//! untouched. Map layouts and the steering rules live in switcher-common.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
// Map keys and values are passed by reference on purpose: a by-value argument is copied onto
// the 512-byte BPF stack first.
#![allow(clippy::needless_borrows_for_generic_args)]

#[cfg(target_arch = "bpf")]
mod bench;
#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod egress;
#[cfg(target_arch = "bpf")]
mod forward;
#[cfg(target_arch = "bpf")]
mod frame;
#[cfg(target_arch = "bpf")]
mod ingress;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod shadow;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::{xdp_action, TC_ACT_OK},
        macros::{classifier, xdp},
        programs::{TcContext, XdpContext},
    };

    #[xdp]
    pub fn switcher_ingress(ctx: XdpContext) -> u32 {
        crate::ingress::run(&ctx).unwrap_or(xdp_action::XDP_PASS)
    }

    /// Never drops: a reply that is not ours, or that we cannot rewrite, leaves as it came.
    #[classifier]
    pub fn switcher_egress(ctx: TcContext) -> i32 {
        crate::egress::run(&ctx);
        TC_ACT_OK
    }

    /// TC ingress: copies a share of a shadowed service's packets to its candidate. Never
    /// drops: the original always goes on.
    #[classifier]
    pub fn switcher_shadow(ctx: TcContext) -> i32 {
        crate::shadow::run(&ctx);
        TC_ACT_OK
    }

    // The verifier rejects any reachable panic, so every access is bounds-checked and this
    // handler is never linked into a program.
    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}

// Lets `cargo check --workspace` build this crate for the host without a BPF target.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
