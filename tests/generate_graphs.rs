//! Decode steps captured as graphs and replayed (the emulator records each launch and
//! GEMM with its arguments and replays them as recorded) give exactly what running
//! every step eagerly gives; on the counting device a replayed step issues no launch.
//! One test in this binary: it switches `ONELAYER_CUDA_GRAPHS`, which is per process.

use onelayer::backend::cuda::emu::EmuDevice;
use onelayer::backend::cuda::meta::MetaDevice;
use onelayer::backend::cuda::CudaBackend;
use onelayer::backend::Backend;
use onelayer::config::builtin;
use onelayer::generate::{generate_with_stats, GenerateParams, GenerateStats, BLOCK_SIZE};
use onelayer::model::Model;
use onelayer::sampling::SamplingParams;
use std::sync::Arc;

fn run<B: Backend>(
    model: &Model<B>,
    graphs: bool,
    p: &GenerateParams,
) -> (Vec<Vec<u32>>, GenerateStats) {
    // This binary runs one test, on one thread: nothing else reads the variable.
    if graphs {
        std::env::remove_var("ONELAYER_CUDA_GRAPHS");
    } else {
        std::env::set_var("ONELAYER_CUDA_GRAPHS", "0");
    }
    let prompts: Vec<Vec<u32>> = (0..5u32)
        .map(|k| {
            (0..(3 + 7 * k))
                .map(|i| (k * 131 + i * 37 + 5) % 512)
                .collect()
        })
        .collect();
    generate_with_stats(model, &prompts, p, true).unwrap()
}

#[test]
fn replayed_decode_steps_equal_eager_ones() {
    let emu = Model::random(
        builtin("tiny").unwrap(),
        CudaBackend::new(Arc::new(EmuDevice::new())),
        3,
    )
    .unwrap();
    let sampling = SamplingParams {
        temperature: 1.0,
        ..SamplingParams::default()
    };
    // a tight budget: buckets change as sequences are admitted, finish and preempt
    let p = GenerateParams {
        kv_cache_tokens: Some(6 * BLOCK_SIZE),
        ..GenerateParams::new(12, sampling, 9, vec![])
    };
    let (eager, e) = run(&emu, false, &p);
    let (graphs, g) = run(&emu, true, &p);
    assert_eq!(graphs, eager, "replayed graphs differ from eager steps");
    let (ec, gc) = (e.decode_step_counts.unwrap(), g.decode_step_counts.unwrap());
    assert_eq!(ec.graph_replays, 0);
    assert!(
        gc.graph_replays > 0 && gc.launches < ec.launches / 2,
        "{gc:?}"
    );
    assert_eq!(gc.device_allocations, 0);

    // The counting device at a real shape: after its capture, a bucket's step issues
    // nothing but the graph (uploads before, the drawn ids after).
    let meta = Model::random(
        builtin("qwen3-0.6b").unwrap(),
        CudaBackend::new(Arc::new(MetaDevice::new(80 << 30))),
        1,
    )
    .unwrap();
    let p = GenerateParams::new(64, SamplingParams::default(), 0, vec![]);
    let (_, s) = run(&meta, true, &p);
    let c = s.decode_step_counts.unwrap();
    let steps = s.counted_decode_steps as u64;
    // the first step runs eagerly (not counted), the second is captured, then replayed
    assert_eq!(c.graph_replays, steps, "{c:?}");
    assert!(c.launches < 2 * c.graph_nodes / steps, "{c:?}");
    assert_eq!((c.host_syncs, c.device_allocations), (steps, 0));
}
