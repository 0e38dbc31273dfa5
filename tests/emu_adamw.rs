//! kernels/adamw.cu on the CUDA devices (emulator; GPU when present) against the
//! CPU AdamW (itself checked against torch.optim.AdamW).

use onelayer::backend::cuda::device::{download_vec, upload_new, Device, KernelArg, LaunchConfig};
use onelayer::backend::cuda::emu::EmuDevice;
use onelayer::backend::cuda::gpu::GpuDevice;
use onelayer::train::AdamW;
use std::sync::Arc;

fn devices() -> Vec<Arc<dyn Device>> {
    let mut v: Vec<Arc<dyn Device>> = vec![Arc::new(EmuDevice::new())];
    if let Ok(g) = GpuDevice::open(0) {
        v.push(Arc::new(g));
    }
    v
}

#[test]
fn adamw_kernel_matches_the_cpu_step() {
    let n = 1000;
    let opt = AdamW {
        lr: 3e-3,
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-8,
        weight_decay: 0.05,
    };
    let init: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    let grads: Vec<Vec<f32>> = (0..3)
        .map(|s| {
            (0..n)
                .map(|i| (((i + 7 * s) * 53 % 97) as f32 - 48.0) / 40.0)
                .collect()
        })
        .collect();
    let (mut p, mut m, mut v) = (init.clone(), vec![0.0; n], vec![0.0; n]);
    for (t, g) in grads.iter().enumerate() {
        opt.step(&mut p, &mut m, &mut v, g, t as u64 + 1, 0.5);
    }
    for dev in devices() {
        let d = &*dev;
        let zeros = vec![0f32; n];
        let (dp, dm, dv) = (
            upload_new(d, &init).unwrap(),
            upload_new(d, &zeros).unwrap(),
            upload_new(d, &zeros).unwrap(),
        );
        let dbf = d.alloc(n * 2).unwrap();
        for (t, g) in grads.iter().enumerate() {
            let dg = upload_new(d, g).unwrap();
            let (bc1, bc2) = opt.bias_corrections(t as u64 + 1);
            let args = [
                KernelArg::Ptr(dp),
                KernelArg::Ptr(dm),
                KernelArg::Ptr(dv),
                KernelArg::Ptr(dbf),
                KernelArg::Ptr(dg),
                KernelArg::I32(n as i32),
                KernelArg::F32(opt.lr),
                KernelArg::F32(opt.beta1),
                KernelArg::F32(opt.beta2),
                KernelArg::F32(opt.eps),
                KernelArg::F32(opt.weight_decay),
                KernelArg::F32(bc1),
                KernelArg::F32(bc2),
                KernelArg::F32(0.5),
            ];
            d.launch("adamw_step_f32", LaunchConfig::linear(2, 256, 0), &args)
                .unwrap();
            d.free(dg);
        }
        let got: Vec<f32> = download_vec(d, dp, n).unwrap();
        let got_m: Vec<f32> = download_vec(d, dm, n).unwrap();
        let bf: Vec<u16> = download_vec(d, dbf, n).unwrap();
        for i in 0..n {
            assert!(
                (got[i] - p[i]).abs() <= 1e-6 * p[i].abs().max(1.0),
                "{}: param {i}: {} vs {}",
                d.name(),
                got[i],
                p[i]
            );
            assert!((got_m[i] - m[i]).abs() <= 1e-6, "{}: m {i}", d.name());
            assert_eq!(
                bf[i],
                half::bf16::from_f32(got[i]).to_bits(),
                "{}: bf16 copy {i}",
                d.name()
            );
        }
        for ptr in [dp, dm, dv, dbf] {
            d.free(ptr);
        }
    }
}
