//! `PoolDevice`: the CUDA backend's caching allocator and counter, a `Device` over
//! any other (the GPU, the host emulator, the counting device).
//!
//! Allocation: a request is rounded up to a size class (512 B steps up to 1 MiB,
//! then 64 classes per power of two: at most 1/32 wasted) and served from the
//! smallest cached free block of at least that size and at most 1/16 larger; only a
//! miss reaches the device. `free` returns the block to the cache. When the device
//! is out of memory the cache is released and the allocation tried once more (what
//! PyTorch's allocator does). Requests above 1 MiB are carved out of segments
//! (best fit, split, coalesced on free), so one phase's freed memory serves the next
//! phase's other shapes. `release_cached` gives cached blocks back. The KV cache
//! never reuses cached memory and generation releases it when it ends, so the
//! training working set stays reserved between steps (training allocates nothing
//! after its first step) unless the device is full, when the retry releases it.
//!
//! A block handed out again is poisoned first where the device supports it (the
//! emulator fills NaN), so a kernel that leaves part of its output unwritten still
//! fails the tests that check every element.
//!
//! Counting: every launch (by kernel), GEMM (and its FLOPs), copy, memset and host
//! synchronisation passes through here, and so does every buffer request with its
//! purpose (`backend::accounting`): the counts are the same whichever device runs.

use super::device::{Device, DevicePtr, GemmEx, GraphOp, KernelArg, LaunchConfig};
use crate::backend::accounting::{current_purpose, Bytes, DeviceCounts, MemoryReport, Purpose};
use crate::backend::MemoryUse;
use crate::{Error, Result};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// The size a request of `bytes` is served with.
pub fn size_class(bytes: usize) -> usize {
    let b = bytes.max(1);
    if b <= 1 << 20 {
        return b.div_ceil(512) * 512;
    }
    let step = b.next_power_of_two() / 64;
    b.div_ceil(step) * step
}

/// Requests above this are carved out of segments (split and coalesced); smaller
/// ones come from per-size free lists.
const LARGE: usize = 1 << 20;

/// Large requests round up to this.
const LARGE_STEP: usize = 1 << 19;

struct InUse {
    size: usize,
    requested: usize,
    purpose: Purpose,
    /// The purpose the block was first allocated for (what `release_cached` keys on).
    origin: Purpose,
    /// Part of a segment (a large block).
    large: bool,
}

/// A block of a segment: a device allocation for large requests, split into blocks
/// (best fit; the rest of a block stays free when it is at least `LARGE`) and
/// coalesced with free neighbours on free.
#[derive(Clone, Copy)]
struct Block {
    size: usize,
    free: bool,
    segment: u64,
}

#[derive(Default)]
struct State {
    /// Blocks handed out, by address.
    in_use: HashMap<u64, InUse>,
    /// Cached free small blocks: (size, address), and each one's origin.
    free: BTreeSet<(usize, u64)>,
    origin: HashMap<u64, Purpose>,
    /// Segments: base address -> (size, the purpose it was allocated for).
    segments: HashMap<u64, (usize, Purpose)>,
    /// Every block of every segment, by address.
    blocks: std::collections::BTreeMap<u64, Block>,
    /// Free large blocks: (size, address).
    large_free: BTreeSet<(usize, u64)>,
    reserved: Bytes,
    requested: Bytes,
    by_purpose: [Bytes; Purpose::ALL.len()],
    counts: DeviceCounts,
    /// The graph being captured, if any, and the captured graphs by handle.
    capture: Option<Capture>,
    freed_in_capture: bool,
    graphs: HashMap<u64, Graph>,
    next_graph: u64,
}

/// A capture in progress: the device's own (a GPU's stream capture), or launches and
/// GEMMs recorded here with their arguments (the emulator, the counting device).
enum Capture {
    Native,
    Recording(Vec<GraphOp>),
}

enum Graph {
    Native(u64),
    /// The ops and their GEMM FLOPs.
    Recorded(Arc<Vec<GraphOp>>, f64),
}

pub struct PoolDevice {
    inner: Arc<dyn Device>,
    state: Mutex<State>,
}

impl PoolDevice {
    pub fn new(inner: Arc<dyn Device>) -> Self {
        PoolDevice {
            inner,
            state: Mutex::new(State::default()),
        }
    }

    /// The device under the cache.
    pub fn inner(&self) -> &Arc<dyn Device> {
        &self.inner
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("pool lock")
    }

    /// Counts since the device was opened.
    pub fn counts(&self) -> DeviceCounts {
        self.lock().counts.clone()
    }

    pub fn memory_report(&self) -> MemoryReport {
        let s = self.lock();
        MemoryReport {
            reserved: s.reserved,
            requested: s.requested,
            by_purpose: Purpose::ALL
                .iter()
                .map(|&p| (p, s.by_purpose[p.index()]))
                .collect(),
            capacity: self.inner.memory_info().map(|(_, total)| total),
        }
    }

    /// Give cached free blocks back to the device: all of them, or those first
    /// allocated for `only` (segments: those wholly free).
    pub fn release_cached(&self, only: Option<Purpose>) {
        let mut s = self.lock();
        let victims: Vec<(usize, u64)> = s
            .free
            .iter()
            .filter(|(_, p)| only.is_none_or(|o| s.origin.get(p) == Some(&o)))
            .copied()
            .collect();
        for (size, p) in victims {
            s.free.remove(&(size, p));
            s.origin.remove(&p);
            s.reserved.sub(size);
            s.counts.device_frees += 1;
            self.inner.free(DevicePtr(p));
        }
        let segments: Vec<(u64, usize)> = s
            .segments
            .iter()
            .filter(|(base, (size, origin))| {
                only.is_none_or(|o| *origin == o)
                    && s.blocks
                        .get(base)
                        .is_some_and(|b| b.free && b.size == *size)
            })
            .map(|(&base, &(size, _))| (base, size))
            .collect();
        for (base, size) in segments {
            s.blocks.remove(&base);
            s.large_free.remove(&(size, base));
            s.segments.remove(&base);
            s.reserved.sub(size);
            s.counts.device_frees += 1;
            self.inner.free(DevicePtr(base));
        }
    }

    /// A large block of `size` bytes from a cached segment (best fit, split), if any.
    fn take_large(s: &mut State, size: usize) -> Option<u64> {
        let &(have, p) = s.large_free.range((size, 0)..).next()?;
        s.large_free.remove(&(have, p));
        let b = s.blocks.get_mut(&p).expect("free block is listed");
        b.free = false;
        if have - size >= LARGE {
            b.size = size;
            let rest = Block {
                size: have - size,
                free: true,
                segment: b.segment,
            };
            s.blocks.insert(p + size as u64, rest);
            s.large_free.insert((rest.size, p + size as u64));
        }
        Some(p)
    }

    /// Return a large block, merged with its free neighbours in the segment.
    fn give_back_large(s: &mut State, p: u64) {
        let mut b = *s.blocks.get(&p).expect("large block");
        let mut start = p;
        let next = p + b.size as u64;
        if let Some(n) = s.blocks.get(&next).copied() {
            if n.free && n.segment == b.segment {
                s.large_free.remove(&(n.size, next));
                s.blocks.remove(&next);
                b.size += n.size;
            }
        }
        if let Some((&q, &prev)) = s.blocks.range(..p).next_back() {
            if prev.free && prev.segment == b.segment && q + prev.size as u64 == p {
                s.large_free.remove(&(prev.size, q));
                s.blocks.remove(&p);
                start = q;
                b.size += prev.size;
            }
        }
        b.free = true;
        s.blocks.insert(start, b);
        s.large_free.insert((b.size, start));
    }

    /// Bytes of cached free blocks.
    fn cached_bytes(s: &State) -> usize {
        s.free
            .iter()
            .chain(&s.large_free)
            .map(|(size, _)| size)
            .sum()
    }
}

impl Drop for PoolDevice {
    fn drop(&mut self) {
        self.release_cached(None);
    }
}

/// Refuse what a captured step must not do (it would not be replayed, or would bake
/// a host value into the graph).
fn not_capturing(s: &State, what: &str) -> Result<()> {
    if s.capture.is_some() {
        return Err(Error::invalid(format!(
            "{what} while a graph is being captured (a captured step uploads its inputs \
             before and downloads after)"
        )));
    }
    Ok(())
}

impl Device for PoolDevice {
    fn name(&self) -> String {
        self.inner.name()
    }

    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        if self.lock().capture.is_some() {
            return Err(Error::invalid(format!(
                "a buffer of {bytes} bytes was requested while a graph is being captured (a \
                 captured step must run in fixed buffers)"
            )));
        }
        let class = size_class(bytes);
        // The emulator allocates exactly what was asked, so its guard zones sit right
        // after the buffer (no segments there); a reused block may still be larger.
        let exact = self.inner.exact_sizes();
        let large = !exact && class > LARGE;
        let size = if exact {
            bytes.max(1)
        } else if large {
            bytes.div_ceil(LARGE_STEP) * LARGE_STEP
        } else {
            class
        };
        let purpose = current_purpose();
        let mut s = self.lock();
        s.counts.buffer_requests += 1;
        // The KV cache takes fresh memory, released when generation ends, so the
        // training working set stays cached for the next step (and, when the device
        // is full, the retry below releases it).
        let hit = if purpose == Purpose::KvCache {
            None
        } else if large {
            Self::take_large(&mut s, size).map(|p| (p, size))
        } else {
            let hit = s
                .free
                .range((size, 0)..)
                .next()
                .copied()
                .filter(|&(have, _)| have <= class + class / 16);
            if let Some(h) = hit {
                s.free.remove(&h);
            }
            hit.map(|(have, p)| (p, have))
        };
        let (ptr, size, origin) = match hit {
            Some((p, have)) => {
                let origin = if large {
                    let seg = s.blocks[&p].segment;
                    s.segments[&seg].1
                } else {
                    s.origin.get(&p).copied().unwrap_or(purpose)
                };
                drop(s);
                self.inner.poison(DevicePtr(p), have)?;
                s = self.lock();
                (DevicePtr(p), have, origin)
            }
            None => {
                let p = match self.inner.alloc(size) {
                    Ok(p) => p,
                    Err(first) => {
                        drop(s);
                        self.release_cached(None);
                        s = self.lock();
                        self.inner.alloc(size).map_err(|_| {
                            Error::invalid(format!(
                                "out of device memory allocating {bytes} bytes for {} \
                                 ({} reserved, {} in live buffers): {first}",
                                purpose.name(),
                                s.reserved.live,
                                s.requested.live
                            ))
                        })?
                    }
                };
                s.counts.device_allocations += 1;
                s.reserved.add(size);
                if large {
                    s.segments.insert(p.0, (size, purpose));
                    let block = Block {
                        size,
                        free: false,
                        segment: p.0,
                    };
                    s.blocks.insert(p.0, block);
                } else {
                    s.origin.insert(p.0, purpose);
                }
                (p, size, purpose)
            }
        };
        s.requested.add(bytes);
        s.by_purpose[purpose.index()].add(bytes);
        s.in_use.insert(
            ptr.0,
            InUse {
                size,
                requested: bytes,
                purpose,
                origin,
                large,
            },
        );
        Ok(ptr)
    }

    fn free(&self, p: DevicePtr) {
        let mut s = self.lock();
        if s.capture.is_some() {
            s.freed_in_capture = true;
        }
        match s.in_use.remove(&p.0) {
            Some(u) => {
                s.requested.sub(u.requested);
                s.by_purpose[u.purpose.index()].sub(u.requested);
                if u.large {
                    Self::give_back_large(&mut s, p.0);
                } else {
                    s.origin.insert(p.0, u.origin);
                    s.free.insert((u.size, p.0));
                }
            }
            None => {
                drop(s);
                self.inner.free(p); // not ours: the device reports it
            }
        }
    }

    fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        {
            let mut s = self.lock();
            not_capturing(&s, "upload")?;
            s.counts.uploads += 1;
            s.counts.upload_bytes += src.len() as u64;
        }
        self.inner.upload(dst, src)
    }

    fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        {
            let mut s = self.lock();
            not_capturing(&s, "download")?;
            s.counts.downloads += 1;
            s.counts.download_bytes += dst.len() as u64;
            s.counts.host_syncs += 1;
        }
        self.inner.download(src, dst)
    }

    fn launch(&self, kernel: &'static str, cfg: LaunchConfig, args: &[KernelArg]) -> Result<()> {
        {
            let mut s = self.lock();
            s.counts.launches += 1;
            *s.counts.launches_by_kernel.entry(kernel).or_insert(0) += 1;
            if let Some(Capture::Recording(ops)) = &mut s.capture {
                ops.push(GraphOp::Launch {
                    kernel,
                    cfg,
                    args: args.to_vec(),
                });
                return Ok(());
            }
        }
        self.inner.launch(kernel, cfg, args)
    }

    fn capture_begin(&self) -> Result<()> {
        let mut s = self.lock();
        if s.capture.is_some() {
            return Err(Error::invalid("a graph capture is already in progress"));
        }
        s.capture = Some(match self.inner.capture_begin() {
            Ok(()) => Capture::Native,
            Err(Error::Unsupported(_)) => Capture::Recording(Vec::new()),
            Err(e) => return Err(e),
        });
        s.freed_in_capture = false;
        Ok(())
    }

    fn capture_end(&self) -> Result<u64> {
        let mut s = self.lock();
        let graph = match s.capture.take() {
            None => return Err(Error::invalid("no graph capture in progress")),
            Some(Capture::Native) => Graph::Native(self.inner.capture_end()?),
            Some(Capture::Recording(ops)) => {
                let flops = ops
                    .iter()
                    .map(|op| match op {
                        GraphOp::Gemm(g) => 2.0 * g.m as f64 * g.n as f64 * g.k as f64,
                        GraphOp::Launch { .. } => 0.0,
                    })
                    .sum();
                Graph::Recorded(Arc::new(ops), flops)
            }
        };
        if std::mem::take(&mut s.freed_in_capture) {
            if let Graph::Native(g) = graph {
                self.inner.graph_free(g);
            }
            return Err(Error::invalid(
                "a buffer was freed while a graph was being captured (the graph would use it)",
            ));
        }
        s.next_graph += 1;
        let id = s.next_graph;
        s.graphs.insert(id, graph);
        Ok(id)
    }

    fn replay(&self, graph: u64) -> Result<()> {
        let g = {
            let mut s = self.lock();
            not_capturing(&s, "graph replay")?;
            s.counts.graph_replays += 1;
            let g = match s.graphs.get(&graph) {
                None => return Err(Error::invalid(format!("no graph {graph}"))),
                Some(Graph::Native(g)) => Err(*g),
                Some(Graph::Recorded(ops, flops)) => Ok((ops.clone(), *flops)),
            };
            if let Ok((ops, flops)) = &g {
                s.counts.graph_nodes += ops.len() as u64;
                s.counts.gemm_flops += flops;
            }
            g.map(|(ops, _)| ops)
        };
        match g {
            Err(native) => self.inner.replay(native),
            Ok(ops) => {
                for op in ops.iter() {
                    match op {
                        GraphOp::Launch { kernel, cfg, args } => {
                            self.inner.launch(kernel, *cfg, args)?
                        }
                        GraphOp::Gemm(g) => self.inner.gemm_ex(g)?,
                    }
                }
                Ok(())
            }
        }
    }

    fn graph_free(&self, graph: u64) {
        if let Some(Graph::Native(g)) = self.lock().graphs.remove(&graph) {
            self.inner.graph_free(g);
        }
    }

    fn synchronize(&self) -> Result<()> {
        {
            let mut s = self.lock();
            not_capturing(&s, "synchronize")?;
            s.counts.host_syncs += 1;
        }
        self.inner.synchronize()
    }

    fn zero(&self, p: DevicePtr, bytes: usize) -> Result<()> {
        {
            let mut s = self.lock();
            not_capturing(&s, "memset")?;
            s.counts.memsets += 1;
            s.counts.memset_bytes += bytes as u64;
        }
        self.inner.zero(p, bytes)
    }

    fn copy(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<()> {
        {
            let mut s = self.lock();
            not_capturing(&s, "device copy")?;
            s.counts.device_copies += 1;
            s.counts.device_copy_bytes += bytes as u64;
        }
        self.inner.copy(dst, src, bytes)
    }

    fn gemm_ex(&self, g: &GemmEx) -> Result<()> {
        {
            let mut s = self.lock();
            s.counts.gemms += 1;
            s.counts.gemm_flops += 2.0 * g.m as f64 * g.n as f64 * g.k as f64;
            if let Some(Capture::Recording(ops)) = &mut s.capture {
                ops.push(GraphOp::Gemm(*g));
                return Ok(());
            }
        }
        self.inner.gemm_ex(g)
    }

    /// Reserved bytes: what the cache holds from the device (live) and the most it
    /// ever held (peak).
    fn memory_use(&self) -> MemoryUse {
        let s = self.lock();
        MemoryUse {
            live_bytes: s.reserved.live,
            peak_bytes: s.reserved.peak,
        }
    }

    /// The device's free memory plus what the cache holds free.
    fn memory_info(&self) -> Option<(usize, usize)> {
        let (free, total) = self.inner.memory_info()?;
        Some((free + Self::cached_bytes(&self.lock()), total))
    }

    fn poison(&self, p: DevicePtr, bytes: usize) -> Result<()> {
        self.inner.poison(p, bytes)
    }

    fn exact_sizes(&self) -> bool {
        self.inner.exact_sizes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::accounting::purpose;
    use crate::backend::cuda::emu::EmuDevice;

    #[test]
    fn size_classes_waste_at_most_a_32nd() {
        for b in [
            1usize,
            511,
            512,
            513,
            1 << 20,
            (1 << 20) + 1,
            3 << 30,
            671_088_640,
        ] {
            let c = size_class(b);
            assert!(c >= b);
            assert!(c - b <= (b / 32).max(511), "{b} -> {c}");
        }
    }

    #[test]
    fn large_blocks_split_and_coalesce() {
        use crate::backend::cuda::meta::MetaDevice;
        let mb = 1usize << 20;
        let pool = PoolDevice::new(Arc::new(MetaDevice::new(1 << 40)));
        let big = pool.alloc(64 * mb).unwrap();
        pool.free(big);
        // three requests carved out of the one cached segment, no new allocation
        let a = pool.alloc(16 * mb).unwrap();
        let b = pool.alloc(16 * mb).unwrap();
        let c = pool.alloc(30 * mb).unwrap();
        assert_eq!(pool.counts().device_allocations, 1);
        assert_eq!(
            (a, b.0 - a.0, c.0 - b.0),
            (big, 16 * mb as u64, 16 * mb as u64)
        );
        // freeing out of order coalesces back into the whole segment
        pool.free(b);
        pool.free(a);
        pool.free(c);
        let again = pool.alloc(64 * mb).unwrap();
        assert_eq!(again, big);
        assert_eq!(pool.counts().device_allocations, 1);
        pool.free(again);
        assert_eq!(pool.memory_report().reserved.live, 64 * mb);
        pool.release_cached(None);
        assert_eq!(pool.memory_report().reserved.live, 0);
        assert_eq!(pool.inner().memory_use().live_bytes, 0);
    }

    #[test]
    fn freed_blocks_are_reused_and_released_by_origin() {
        let emu = Arc::new(EmuDevice::new());
        let pool = PoolDevice::new(emu.clone());
        let a = {
            let _k = purpose(Purpose::KvCache);
            pool.alloc(10_000).unwrap()
        };
        let b = pool.alloc(3_000).unwrap();
        assert_eq!(pool.counts().device_allocations, 2);
        pool.free(a);
        pool.free(b);
        // the same sizes come back from the cache
        let a2 = pool.alloc(10_000).unwrap();
        let b2 = pool.alloc(2_900).unwrap();
        assert_eq!((a2, b2), (a, b));
        let c = pool.counts();
        assert_eq!((c.device_allocations, c.buffer_requests), (2, 4));
        // a reused block is poisoned (NaN bytes) on the emulator
        let mut bytes = vec![0u8; 16];
        pool.download(b2, &mut bytes).unwrap();
        assert!(bytes.iter().all(|&x| x == 0xFF));
        pool.free(a2);
        pool.free(b2);
        assert_eq!(emu.allocations(), 2);
        pool.release_cached(Some(Purpose::KvCache));
        assert_eq!(
            emu.allocations(),
            1,
            "only the KV cache's block is released"
        );
        let r = pool.memory_report();
        assert_eq!(r.requested.live, 0);
        assert_eq!(r.purpose(Purpose::KvCache).peak, 10_000);
        assert_eq!(r.reserved.live, 3_000, "the emulator allocates exact sizes");
        drop(pool);
        assert_eq!(emu.allocations(), 0);
    }

    #[test]
    fn a_capture_records_launches_and_refuses_allocations() {
        use crate::backend::cuda::meta::MetaDevice;
        let pool = PoolDevice::new(Arc::new(MetaDevice::new(1 << 30)));
        let p = pool.alloc(4096).unwrap();
        pool.capture_begin().unwrap();
        assert!(pool.capture_begin().is_err(), "nested capture");
        assert!(pool.alloc(16).is_err(), "allocation in a capture");
        assert!(pool.upload(p, &[0; 4]).is_err(), "upload in a capture");
        let g = GemmEx {
            out: p,
            out_f32: true,
            x: p,
            w: p,
            m: 4,
            n: 4,
            k: 4,
            trans_x: false,
            trans_w: true,
            accumulate: false,
        };
        pool.gemm_ex(&g).unwrap();
        let id = pool.capture_end().unwrap();
        let before = pool.counts();
        pool.replay(id).unwrap();
        pool.replay(id).unwrap();
        let c = pool.counts().since(&before);
        assert_eq!((c.graph_replays, c.graph_nodes, c.gemms), (2, 2, 0));
        assert_eq!(c.gemm_flops, 2.0 * 2.0 * 64.0);
        pool.graph_free(id);
        assert!(pool.replay(id).is_err());
        pool.free(p);
    }
}
