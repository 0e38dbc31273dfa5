//! What a backend's device did, counted: allocations by purpose, launches, GEMM
//! FLOPs, copies, memsets and host synchronisations (`Backend::counts`).
//!
//! The purpose of an allocation is the caller's, not the device's: code that
//! allocates for a reason (the model's weights, the KV cache, the trainer's state,
//! the LM-head's logits chunks) opens a scope with [`purpose`], and every buffer
//! allocated on that thread until the guard drops is booked under it. Everything
//! else is `Activations`. The CUDA backend counts on every device (GPU, emulator,
//! counting device) in the same place (`backend::cuda::pool`), so the counts of a
//! run do not depend on which device ran it.

use std::cell::Cell;
use std::collections::BTreeMap;

/// Why a buffer was allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Purpose {
    /// Model weights in the compute type (frozen, and the trained layers' copies).
    Weights,
    /// Trained layers: f32 master copy, gradient, optimizer state.
    TrainedState,
    /// The generation KV cache.
    KvCache,
    /// The hidden state entering the lowest trained layer, kept for the step.
    PrefixCache,
    /// Everything computed on the way (the default).
    Activations,
    /// LM-head logits and their gradient (chunked).
    Logits,
}

impl Purpose {
    pub const ALL: [Purpose; 6] = [
        Purpose::Weights,
        Purpose::TrainedState,
        Purpose::KvCache,
        Purpose::PrefixCache,
        Purpose::Activations,
        Purpose::Logits,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Purpose::Weights => "weights",
            Purpose::TrainedState => "trained_state",
            Purpose::KvCache => "kv_cache",
            Purpose::PrefixCache => "prefix_cache",
            Purpose::Activations => "activations",
            Purpose::Logits => "logits",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

thread_local! {
    static CURRENT: Cell<Purpose> = const { Cell::new(Purpose::Activations) };
}

/// Book allocations made on this thread under `p` until the guard drops (scopes
/// nest; the previous purpose comes back).
#[must_use = "the purpose lasts while the guard lives"]
pub fn purpose(p: Purpose) -> PurposeGuard {
    let prev = CURRENT.with(|c| c.replace(p));
    PurposeGuard { prev }
}

/// The purpose allocations on this thread are booked under now.
pub fn current_purpose() -> Purpose {
    CURRENT.with(|c| c.get())
}

pub struct PurposeGuard {
    prev: Purpose,
}

impl Drop for PurposeGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.prev));
    }
}

/// Live and peak bytes of one kind of allocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bytes {
    pub live: usize,
    pub peak: usize,
}

impl Bytes {
    pub fn add(&mut self, n: usize) {
        self.live += n;
        self.peak = self.peak.max(self.live);
    }
    pub fn sub(&mut self, n: usize) {
        self.live = self.live.saturating_sub(n);
    }
}

/// Running totals of a device's work since it was opened. Subtract two snapshots
/// ([`DeviceCounts::since`]) for one phase.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceCounts {
    /// Allocations that reached the device (`cuMemAlloc`): misses of the cache.
    pub device_allocations: u64,
    /// Buffers handed out (cache hits and misses).
    pub buffer_requests: u64,
    /// Device memory returned to the device.
    pub device_frees: u64,
    pub launches: u64,
    pub launches_by_kernel: BTreeMap<&'static str, u64>,
    pub gemms: u64,
    pub gemm_flops: f64,
    pub uploads: u64,
    pub upload_bytes: u64,
    pub downloads: u64,
    pub download_bytes: u64,
    pub memsets: u64,
    pub memset_bytes: u64,
    pub device_copies: u64,
    pub device_copy_bytes: u64,
    /// Points where the host waits for the device (downloads, `synchronize`).
    pub host_syncs: u64,
    /// Graphs launched (`Backend::replay`) and the kernels and GEMMs they ran
    /// (launches and GEMMs count only what the host issued one by one).
    pub graph_replays: u64,
    pub graph_nodes: u64,
}

impl DeviceCounts {
    /// Add `other`'s counts to these.
    pub fn add(&mut self, other: &DeviceCounts) {
        for (k, &n) in &other.launches_by_kernel {
            *self.launches_by_kernel.entry(k).or_insert(0) += n;
        }
        self.device_allocations += other.device_allocations;
        self.buffer_requests += other.buffer_requests;
        self.device_frees += other.device_frees;
        self.launches += other.launches;
        self.gemms += other.gemms;
        self.gemm_flops += other.gemm_flops;
        self.uploads += other.uploads;
        self.upload_bytes += other.upload_bytes;
        self.downloads += other.downloads;
        self.download_bytes += other.download_bytes;
        self.memsets += other.memsets;
        self.memset_bytes += other.memset_bytes;
        self.device_copies += other.device_copies;
        self.device_copy_bytes += other.device_copy_bytes;
        self.host_syncs += other.host_syncs;
        self.graph_replays += other.graph_replays;
        self.graph_nodes += other.graph_nodes;
    }

    /// What happened between `before` and `self`.
    pub fn since(&self, before: &DeviceCounts) -> DeviceCounts {
        let mut by_kernel = BTreeMap::new();
        for (k, &n) in &self.launches_by_kernel {
            let d = n - before.launches_by_kernel.get(k).copied().unwrap_or(0);
            if d > 0 {
                by_kernel.insert(*k, d);
            }
        }
        DeviceCounts {
            device_allocations: self.device_allocations - before.device_allocations,
            buffer_requests: self.buffer_requests - before.buffer_requests,
            device_frees: self.device_frees - before.device_frees,
            launches: self.launches - before.launches,
            launches_by_kernel: by_kernel,
            gemms: self.gemms - before.gemms,
            gemm_flops: self.gemm_flops - before.gemm_flops,
            uploads: self.uploads - before.uploads,
            upload_bytes: self.upload_bytes - before.upload_bytes,
            downloads: self.downloads - before.downloads,
            download_bytes: self.download_bytes - before.download_bytes,
            memsets: self.memsets - before.memsets,
            memset_bytes: self.memset_bytes - before.memset_bytes,
            device_copies: self.device_copies - before.device_copies,
            device_copy_bytes: self.device_copy_bytes - before.device_copy_bytes,
            host_syncs: self.host_syncs - before.host_syncs,
            graph_replays: self.graph_replays - before.graph_replays,
            graph_nodes: self.graph_nodes - before.graph_nodes,
        }
    }

    /// The counts divided by `n` (per step), as JSON.
    pub fn to_json_per(&self, n: u64) -> serde_json::Value {
        let d = n.max(1) as f64;
        let per = |v: u64| v as f64 / d;
        serde_json::json!({
            "device_allocations": per(self.device_allocations),
            "buffer_requests": per(self.buffer_requests),
            "device_frees": per(self.device_frees),
            "launches": per(self.launches),
            "gemms": per(self.gemms),
            "gemm_tflop": self.gemm_flops / d / 1e12,
            "uploads": per(self.uploads),
            "upload_bytes": per(self.upload_bytes),
            "downloads": per(self.downloads),
            "download_bytes": per(self.download_bytes),
            "memsets": per(self.memsets),
            "memset_bytes": per(self.memset_bytes),
            "device_copies": per(self.device_copies),
            "device_copy_bytes": per(self.device_copy_bytes),
            "host_syncs": per(self.host_syncs),
            "graph_replays": per(self.graph_replays),
            "graph_nodes": per(self.graph_nodes),
        })
    }
}

/// Memory of a backend's device: what its allocator holds (`reserved`: what runs
/// out on a GPU), what live buffers take (`requested`), and the live buffers by
/// purpose.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryReport {
    pub reserved: Bytes,
    pub requested: Bytes,
    pub by_purpose: Vec<(Purpose, Bytes)>,
    /// The device's memory (total), where known.
    pub capacity: Option<usize>,
}

impl MemoryReport {
    pub fn purpose(&self, p: Purpose) -> Bytes {
        self.by_purpose
            .iter()
            .find(|(q, _)| *q == p)
            .map(|(_, b)| *b)
            .unwrap_or_default()
    }

    pub fn to_json(&self) -> serde_json::Value {
        let by: serde_json::Map<String, serde_json::Value> = self
            .by_purpose
            .iter()
            .map(|(p, b)| {
                (
                    p.name().to_string(),
                    serde_json::json!({"live_bytes": b.live, "peak_bytes": b.peak}),
                )
            })
            .collect();
        serde_json::json!({
            "reserved_live_bytes": self.reserved.live,
            "reserved_peak_bytes": self.reserved.peak,
            "requested_live_bytes": self.requested.live,
            "requested_peak_bytes": self.requested.peak,
            "by_purpose": by,
            "capacity_bytes": self.capacity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_and_restore() {
        assert_eq!(current_purpose(), Purpose::Activations);
        {
            let _w = purpose(Purpose::Weights);
            assert_eq!(current_purpose(), Purpose::Weights);
            {
                let _k = purpose(Purpose::KvCache);
                assert_eq!(current_purpose(), Purpose::KvCache);
            }
            assert_eq!(current_purpose(), Purpose::Weights);
        }
        assert_eq!(current_purpose(), Purpose::Activations);
    }
}
