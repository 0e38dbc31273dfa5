//! The buffers of a decode step, made once for the widest bucket and reused every
//! step at the step's batch-size bucket (`Backend::set_len`): the step uploads its
//! inputs into them, runs the model, samples on the device and downloads the drawn
//! ids (its one host synchronisation). No device allocation, no memset; every
//! launch's arguments are the same from step to step within a bucket, only device
//! memory changes, so the step can be captured as a CUDA graph and replayed.
//!
//! On a backend that can capture (CUDA: a GPU's stream capture; the emulator and the
//! counting device record the launches with their arguments), the first step of a
//! bucket runs eagerly, the second is captured as a graph, and from then on the
//! bucket's steps replay it: one graph launch instead of ~500 kernel launches.
//! `ONELAYER_CUDA_GRAPHS=0` runs every step eagerly.
//!
//! Rows past the live sequences (the bucket's padding) read and write block 0,
//! position 0, which no sequence owns; their draws are ignored.

use crate::backend::accounting::{purpose, Purpose};
use crate::backend::Backend;
use crate::model::{Model, PagedIdx, PagedKvCache, PagedStore, Scratch};
use crate::sampling::SamplingParams;
use crate::Result;

/// Batch sizes a decode step runs at (vLLM's capture sizes, extended): 1, 2, 4, 8,
/// then steps of 8 to 64, of 32 to 256, of 128 beyond; never above `max`.
pub fn bucket(n: usize, max: usize) -> usize {
    let b = match n {
        0..=1 => 1,
        2 => 2,
        3..=4 => 4,
        5..=64 => n.next_multiple_of(8),
        65..=256 => n.next_multiple_of(32),
        _ => n.next_multiple_of(128),
    };
    b.min(max.max(n))
}

/// One live row of a decode step.
pub struct DecodeRow<'a> {
    pub token: u32,
    pub pos: usize,
    /// Physical row the token's key and value go to.
    pub row: u32,
    pub table: &'a mut dyn Iterator<Item = u32>,
    pub stream: u64,
}

pub struct DecodeStep<B: Backend> {
    /// The bucket the buffers are set to, and the most they hold.
    pub rows: usize,
    max_rows: usize,
    width: usize,
    ids: B::Idx,
    pos: B::Idx,
    kv_rows: B::Idx,
    seq: B::Idx,
    table: B::Idx,
    streams: B::Idx,
    drawn: B::Idx,
    scratch: Scratch<B>,
    x: B::Buf,
    hidden: B::Buf,
    logits: B::Buf,
    work: B::Buf,
    host: [Vec<u32>; 5],
    /// Graphs by bucket, the buckets run once eagerly, and whether to capture.
    graphs: std::collections::HashMap<usize, B::Graph>,
    warm: std::collections::HashSet<usize>,
    capture: bool,
}

/// Whether decode steps are captured as graphs (`ONELAYER_CUDA_GRAPHS=0`: never).
pub fn graphs_enabled() -> bool {
    std::env::var("ONELAYER_CUDA_GRAPHS").map_or(true, |v| v != "0")
}

impl<B: Backend> DecodeStep<B> {
    /// Buffers for up to `rows` rows over a cache whose table rows hold `width`
    /// blocks.
    pub fn new(
        model: &Model<B>,
        cache: &PagedKvCache<B>,
        rows: usize,
        width: usize,
    ) -> Result<Self> {
        let be = &model.backend;
        let cfg = &model.cfg;
        let _a = purpose(Purpose::Activations);
        let zeros = vec![0u32; rows];
        let seq: Vec<u32> = (0..rows as u32).collect();
        let dims = cache.dims(cfg, rows, rows, width);
        Ok(DecodeStep {
            rows,
            max_rows: rows,
            width,
            ids: be.upload_idx(&zeros)?,
            pos: be.upload_idx(&zeros)?,
            kv_rows: be.upload_idx(&zeros)?,
            seq: be.upload_idx(&seq)?,
            table: be.upload_idx(&vec![0; rows * width])?,
            streams: be.upload_idx(&vec![0; 2 * rows])?,
            drawn: be.upload_idx(&zeros)?,
            scratch: Scratch::new(be, cfg, rows)?,
            x: be.empty(rows * cfg.hidden_size)?,
            hidden: be.empty(rows * cfg.hidden_size)?,
            // booked as rollout activations: the plan's logits term is training's
            logits: be.empty_f32(rows * cfg.vocab_size)?,
            work: be.empty_f32(be.paged_decode_work_len(dims))?,
            host: [
                Vec::with_capacity(rows),
                Vec::with_capacity(rows),
                Vec::with_capacity(rows),
                Vec::with_capacity(rows * width),
                Vec::with_capacity(2 * rows),
            ],
            graphs: Default::default(),
            warm: Default::default(),
            capture: graphs_enabled(),
        })
    }

    /// Set every buffer to `rows` rows (at most the widest).
    pub fn set_rows(&mut self, model: &Model<B>, rows: usize) -> Result<()> {
        if rows == self.rows {
            return Ok(());
        }
        assert!(
            rows <= self.max_rows,
            "bucket {rows} above {}",
            self.max_rows
        );
        let be = &model.backend;
        let cfg = &model.cfg;
        for idx in [
            &mut self.ids,
            &mut self.pos,
            &mut self.kv_rows,
            &mut self.seq,
            &mut self.drawn,
        ] {
            be.set_idx_len(idx, rows)?;
        }
        be.set_idx_len(&mut self.table, rows * self.width)?;
        be.set_idx_len(&mut self.streams, 2 * rows)?;
        let seq: Vec<u32> = (0..rows as u32).collect();
        be.upload_idx_into(&mut self.seq, &seq)?;
        self.scratch.set_tokens(be, cfg, rows)?;
        be.set_len(&mut self.x, rows * cfg.hidden_size)?;
        be.set_len(&mut self.hidden, rows * cfg.hidden_size)?;
        be.set_len(&mut self.logits, rows * cfg.vocab_size)?;
        self.rows = rows;
        Ok(())
    }

    /// Run one step over `live` (at most `self.rows`); returns their draws.
    pub fn run(
        &mut self,
        model: &Model<B>,
        cache: &mut PagedKvCache<B>,
        live: &mut [DecodeRow<'_>],
        sampling: &SamplingParams,
        seed: u64,
    ) -> Result<Vec<u32>> {
        let be = &model.backend;
        let (n, rows, width) = (live.len(), self.rows, self.width);
        assert!(n <= rows, "decode step of {n} rows in a bucket of {rows}");
        let [ids, pos, kv_rows, table, streams] = &mut self.host;
        for v in [
            &mut *ids,
            &mut *pos,
            &mut *kv_rows,
            &mut *table,
            &mut *streams,
        ] {
            v.clear();
        }
        for r in live.iter_mut() {
            ids.push(r.token);
            pos.push(r.pos as u32);
            kv_rows.push(r.row);
            let start = table.len();
            table.extend(&mut r.table);
            assert!(
                table.len() - start <= width,
                "block table wider than the step's"
            );
            table.resize(start + width, 0);
            streams.extend([r.stream as u32, (r.stream >> 32) as u32]);
        }
        ids.resize(rows, 0);
        pos.resize(rows, 0);
        kv_rows.resize(rows, 0);
        table.resize(rows * width, 0);
        streams.resize(2 * rows, 0);
        be.upload_idx_into(&mut self.ids, ids)?;
        be.upload_idx_into(&mut self.pos, pos)?;
        be.upload_idx_into(&mut self.kv_rows, kv_rows)?;
        be.upload_idx_into(&mut self.table, table)?;
        be.upload_idx_into(&mut self.streams, streams)?;

        if !self.capture {
            self.compute(model, cache, sampling, seed)?;
        } else if let Some(g) = self.graphs.get(&rows) {
            be.replay(g)?;
        } else if self.warm.insert(rows) {
            self.compute(model, cache, sampling, seed)?; // first step of the bucket
        } else if be.capture_begin()? {
            let ran = self.compute(model, cache, sampling, seed);
            let graph = be.capture_end(); // always end the capture, even after an error
            ran?;
            let graph = graph?.expect("a backend that captures returns its graph");
            be.replay(&graph)?;
            self.graphs.insert(rows, graph);
        } else {
            self.capture = false; // the backend runs everything eagerly
            self.compute(model, cache, sampling, seed)?;
        }
        be.download_idx(&self.drawn, n)
    }

    /// The step's device work on the uploaded inputs: the model, the LM head, the
    /// draws (what a graph holds).
    fn compute(
        &mut self,
        model: &Model<B>,
        cache: &mut PagedKvCache<B>,
        sampling: &SamplingParams,
        seed: u64,
    ) -> Result<()> {
        let be = &model.backend;
        let (rows, width) = (self.rows, self.width);
        let dims = cache.dims(&model.cfg, rows, rows, width);
        let mut store = PagedStore {
            cache,
            idx: PagedIdx {
                rows: &self.kv_rows,
                seq: &self.seq,
                pos: &self.pos,
                table: &self.table,
            },
            dims,
            decode: Some(&mut self.work),
        };
        model.forward_into(
            &self.ids,
            &self.pos,
            &mut store,
            &mut self.scratch,
            &mut self.x,
            &mut self.hidden,
            None,
        )?;
        let (h, v) = (model.cfg.hidden_size, model.cfg.vocab_size);
        be.linear(
            &mut self.logits,
            &self.hidden,
            model.weights.head(),
            None,
            rows,
            v,
            h,
        )?;
        be.sample_into(
            &mut self.drawn,
            &self.logits,
            &self.streams,
            rows,
            v,
            sampling,
            seed,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::bucket;

    #[test]
    fn buckets_cover_every_size_once() {
        assert_eq!(
            (1..=10).map(|n| bucket(n, 1024)).collect::<Vec<_>>(),
            vec![1, 2, 4, 4, 8, 8, 8, 8, 16, 16]
        );
        assert_eq!(bucket(65, 1024), 96);
        assert_eq!(bucket(300, 1024), 384);
        assert_eq!(bucket(300, 290), 300);
        assert_eq!(bucket(17, 20), 20);
        for n in 1..2000 {
            let b = bucket(n, 4096);
            assert!(b >= n && b <= 2 * n && b - n < 128, "{n} -> {b}");
        }
    }
}
