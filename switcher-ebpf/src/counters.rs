//! Per-CPU counters: no atomics needed, userspace sums the CPUs.

use switcher_common::{backend_index, Reason};

use crate::maps::{COLOR_COUNTERS, MEMBER_COUNTERS, REASON_COUNTERS};

#[inline(always)]
pub fn reason(r: Reason) {
    if let Some(c) = REASON_COUNTERS.get_ptr_mut(r as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}

/// A packet steered to (service, colour), member `slot`.
#[inline(always)]
pub fn steered(service_id: u32, color: u8, slot: u16, bytes: u64, new_flow: bool, pin_miss: bool) {
    if let Some(c) = COLOR_COUNTERS.get_ptr_mut(backend_index(service_id, color)) {
        // SAFETY: as above.
        let c = unsafe { &mut *c };
        c.packets += 1;
        c.bytes += bytes;
        c.new_flows += new_flow as u64;
        c.pin_misses += pin_miss as u64;
    }
    if let Some(m) = MEMBER_COUNTERS.get_ptr_mut(u32::from(slot)) {
        // SAFETY: as above.
        let m = unsafe { &mut *m };
        m.packets += 1;
        m.bytes += bytes;
        m.new_flows += new_flow as u64;
    }
}

/// A TCP reset sent by a backend of (service, colour).
#[inline(always)]
pub fn reset(service_id: u32, color: u8) {
    if let Some(c) = COLOR_COUNTERS.get_ptr_mut(backend_index(service_id, color)) {
        // SAFETY: per-CPU slot.
        unsafe { (*c).resets += 1 };
    }
}

/// An ICMP unreachable about a packet sent to (service, colour)'s backend.
#[inline(always)]
pub fn unreachable(service_id: u32, color: u8) {
    if let Some(c) = COLOR_COUNTERS.get_ptr_mut(backend_index(service_id, color)) {
        // SAFETY: per-CPU slot.
        unsafe { (*c).unreachables += 1 };
    }
}
