//! kernels/rmsnorm.cu on the host emulator against the CPU reference (`cpu::rmsnorm`),
//! plus the emulator's launch checks: a missing `__syncthreads` arrival is reported by
//! name (never a hang), and wrong launch arguments are refused naming the kernel.

use half::bf16;
use onelayer::backend::cpu;
use onelayer::backend::cuda::device::{
    download_vec, upload_new, Device, DevicePtr, KernelArg, LaunchConfig,
};
use onelayer::backend::cuda::emu::EmuDevice;

const EPS: f32 = 1e-6;
const DIMS: [usize; 6] = [1, 7, 64, 100, 1024, 4100];

/// Deterministic values in [-2, -0.05] ∪ [0.05, 2] (never zero).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
            let m = 0.05 + 1.95 * u;
            if s & 1 == 0 {
                m
            } else {
                -m
            }
        })
        .collect()
}

/// The launch geometry the kernel header recommends.
fn threads(dim: usize, elem_bytes: usize) -> u32 {
    let v = 16 / elem_bytes;
    (32 * dim.div_ceil(32 * v)).clamp(32, 256) as u32
}

/// ‖got − want‖ / ‖want‖, with the worst element for the message.
fn rel_err(got: &[f32], want: &[f32]) -> (f64, usize) {
    let (mut num, mut den, mut worst, mut at) = (0f64, 0f64, -1f64, 0);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g as f64 - w as f64).abs();
        num += d * d;
        den += (w as f64) * (w as f64);
        if d > worst || d.is_nan() {
            worst = if d.is_nan() { f64::INFINITY } else { d };
            at = i;
        }
    }
    ((num / den).sqrt(), at)
}

#[allow(clippy::too_many_arguments)]
fn launch(
    dev: &EmuDevice,
    kernel: &'static str,
    out: DevicePtr,
    rstd: DevicePtr,
    x: DevicePtr,
    w: DevicePtr,
    rows: usize,
    dim: usize,
    block: u32,
) -> onelayer::Result<()> {
    let args = [
        out.into(),
        rstd.into(),
        x.into(),
        w.into(),
        (rows as i32).into(),
        (dim as i32).into(),
        EPS.into(),
    ];
    dev.launch(kernel, LaunchConfig::linear(rows as u32, block, 0), &args)
}

fn check_f32(dim: usize, rows: usize, block: u32, x_offset_elems: usize) {
    let dev = EmuDevice::new();
    let x = values(rows * dim, dim as u64);
    let w = values(dim, 7 + dim as u64);
    let mut want = vec![0f32; rows * dim];
    cpu::rmsnorm(&mut want, &x, &w, rows, dim, EPS);

    // x may start `x_offset_elems` into its allocation (a misaligned view: scalar path).
    let mut padded = vec![1f32; x_offset_elems];
    padded.extend_from_slice(&x);
    let xp = upload_new(&dev, &padded)
        .unwrap()
        .offset(4 * x_offset_elems);
    let wp = upload_new(&dev, &w).unwrap();
    let op = dev.alloc(4 * rows * dim).unwrap();
    let rp = dev.alloc(4 * rows).unwrap();
    launch(
        &dev,
        "rmsnorm_forward_f32",
        op,
        rp,
        xp,
        wp,
        rows,
        dim,
        block,
    )
    .unwrap();
    let got: Vec<f32> = download_vec(&dev, op, rows * dim).unwrap();
    let rstd: Vec<f32> = download_vec(&dev, rp, rows).unwrap();

    let case = format!("f32 dim {dim} rows {rows} block {block} offset {x_offset_elems}");
    assert!(
        got.iter().all(|v| v.to_bits() != u32::MAX),
        "{case}: an output element was never written"
    );
    let (err, at) = rel_err(&got, &want);
    assert!(
        err <= 1e-5,
        "{case}: relative error {err:.2e}, worst at {at}: got {} want {}",
        got[at],
        want[at]
    );
    for (r, &g) in rstd.iter().enumerate() {
        let ms: f64 = x[r * dim..(r + 1) * dim]
            .iter()
            .map(|&v| (v as f64) * (v as f64))
            .sum::<f64>()
            / dim as f64;
        let want = 1.0 / (ms + EPS as f64).sqrt();
        assert!(
            ((g as f64 - want) / want).abs() <= 1e-5,
            "{case}: rstd[{r}] = {g}, want {want}"
        );
    }
}

#[test]
fn rmsnorm_f32_matches_cpu() {
    for dim in DIMS {
        let rows = if dim >= 1024 { 3 } else { 5 };
        check_f32(dim, rows, threads(dim, 4), 0);
    }
}

#[test]
fn rmsnorm_f32_any_block_size_and_misaligned_rows() {
    for block in [32, 64, 1024] {
        check_f32(4100, 2, block, 0);
    }
    check_f32(100, 3, 64, 1); // x 4 bytes past 16-byte alignment: element-wise path
    check_f32(1024, 2, 256, 3);
}

#[test]
fn rmsnorm_bf16_matches_cpu() {
    let dev = EmuDevice::new();
    for dim in DIMS {
        let rows = if dim >= 1024 { 3 } else { 5 };
        let xb: Vec<bf16> = values(rows * dim, 3 * dim as u64)
            .into_iter()
            .map(bf16::from_f32)
            .collect();
        let wb: Vec<bf16> = values(dim, 11 + dim as u64)
            .into_iter()
            .map(bf16::from_f32)
            .collect();
        let x: Vec<f32> = xb.iter().map(|v| v.to_f32()).collect();
        let w: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
        let mut want = vec![0f32; rows * dim];
        cpu::rmsnorm(&mut want, &x, &w, rows, dim, EPS);

        let xp = upload_new(&dev, &xb).unwrap();
        let wp = upload_new(&dev, &wb).unwrap();
        let op = dev.alloc(2 * rows * dim).unwrap();
        let block = threads(dim, 2);
        launch(
            &dev,
            "rmsnorm_forward_bf16",
            op,
            DevicePtr::NULL,
            xp,
            wp,
            rows,
            dim,
            block,
        )
        .unwrap();
        let got: Vec<bf16> = download_vec(&dev, op, rows * dim).unwrap();
        assert!(
            got.iter().all(|v| v.to_bits() != 0xFFFF),
            "bf16 dim {dim}: an output element was never written"
        );
        let got: Vec<f32> = got.iter().map(|v| v.to_f32()).collect();
        let (err, at) = rel_err(&got, &want);
        assert!(
            err <= 2e-2,
            "bf16 dim {dim}: relative error {err:.2e}, worst at {at}: got {} want {}",
            got[at],
            want[at]
        );
        // transformers' rounding: bf16(w * bf16(x * rstd)); at most one bf16 step away.
        for (i, &g) in got.iter().enumerate() {
            let wi = w[i % dim];
            let r = want[i] / (x[i] * wi); // rstd of the row (x, w never zero)
            let hf = bf16::from_f32(wi * bf16::from_f32(x[i] * r).to_f32()).to_f32();
            assert!(
                (g - hf).abs() <= hf.abs() / 128.0,
                "bf16 dim {dim} [{i}]: got {g}, transformers {hf}"
            );
        }
        for p in [xp, wp, op] {
            dev.free(p);
        }
    }
    assert_eq!(dev.allocations(), 0);
}

#[test]
fn missing_syncthreads_arrival_is_named_not_a_hang() {
    let dev = EmuDevice::new();
    let out = dev.alloc(4 * 64).unwrap();
    let t = std::time::Instant::now();
    let err = dev
        .launch(
            "emu_test_missing_sync",
            LaunchConfig::linear(2, 64, 0),
            &[out.into(), KernelArg::I32(48)],
        )
        .unwrap_err()
        .to_string();
    assert!(
        t.elapsed().as_secs() < 4,
        "took {:?}: detected by timeout, not by the exit",
        t.elapsed()
    );
    for want in [
        "emu_test_missing_sync",
        "block (0,0,0)",
        "__syncthreads at kernels/tests/emu_selftest.cu:",
        "threads 0-47: waiting at __syncthreads",
        "threads 48-63: exited the kernel",
    ] {
        assert!(err.contains(want), "missing {want:?} in: {err}");
    }
    // The device stays usable after a failed launch.
    check_f32(64, 2, 32, 0);
}

#[test]
fn launch_arguments_are_checked_against_the_signature() {
    let dev = EmuDevice::new();
    let p = dev.alloc(64).unwrap();
    let cfg = LaunchConfig::linear(1, 32, 0);
    let six = [
        p.into(),
        p.into(),
        p.into(),
        p.into(),
        1i32.into(),
        4i32.into(),
    ];
    let e = dev
        .launch("rmsnorm_forward_f32", cfg, &six)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rmsnorm_forward_f32") && e.contains("takes 7 arguments, got 6"),
        "{e}"
    );

    let mut wrong = six.to_vec();
    wrong.push(KernelArg::I32(1)); // eps must be f32
    let e = dev
        .launch("rmsnorm_forward_f32", cfg, &wrong)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rmsnorm_forward_f32") && e.contains("argument 6 (eps) must be f32, got i32"),
        "{e}"
    );

    let mut swapped = wrong.clone();
    swapped[6] = KernelArg::F32(1e-6);
    swapped[4] = KernelArg::U32(1); // rows must be i32
    let e = dev
        .launch("rmsnorm_forward_f32", cfg, &swapped)
        .unwrap_err()
        .to_string();
    assert!(e.contains("argument 4 (rows) must be i32, got u32"), "{e}");

    let e = dev
        .launch("rmsnorm_forward_f64", cfg, &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown kernel rmsnorm_forward_f64"), "{e}");

    // A pointer that is not in a live allocation.
    swapped[4] = KernelArg::I32(1);
    swapped[2] = KernelArg::Ptr(DevicePtr(0x10));
    let e = dev
        .launch("rmsnorm_forward_f32", cfg, &swapped)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("argument 2 (x)") && e.contains("not inside a live allocation"),
        "{e}"
    );

    let e = dev
        .launch("rmsnorm_forward_f32", LaunchConfig::linear(1, 2048, 0), &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("takes 7 arguments"), "{e}");
}
