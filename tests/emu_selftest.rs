//! The host emulator's own semantics, through the test kernels of
//! kernels/tests/emu_selftest.cu: warp shuffles and votes against PTX's rules, block
//! reductions, mma / ldmatrix / cp.async against a plain matmul, atomics, bf16 / half
//! rounding against the `half` crate, dynamic shared memory, and the failure modes
//! (deadlock timeout, divergent barriers, partial warps, out-of-bounds writes).

use half::{bf16, f16};
use onelayer::backend::cuda::device::{download_vec, upload_new, Device, KernelArg, LaunchConfig};
use onelayer::backend::cuda::emu::{asan_enabled, EmuDevice};
use std::time::{Duration, Instant};

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0 // [-1, 1)
        })
        .collect()
}

#[test]
fn warp_shuffles_and_votes_follow_ptx() {
    let dev = EmuDevice::new();
    let out = dev.alloc(4 * 64 * 12).unwrap();
    dev.launch(
        "emu_test_warp_ops",
        LaunchConfig::linear(1, 64, 0),
        &[out.into()],
    )
    .unwrap();
    let got: Vec<i32> = download_vec(&dev, out, 64 * 12).unwrap();
    for tid in 0..64usize {
        let (w, lane) = (tid / 32, tid % 32);
        let v = |l: usize| (100 * w + l) as i32;
        let seg = |width: usize| lane / width * width;
        let want = [
            v(lane * 7 % 32),
            v(seg(8) + (lane + 3) % 8),
            if lane >= 3 { v(lane - 3) } else { v(lane) },
            if lane % 16 >= 2 { v(lane - 2) } else { v(lane) },
            if lane + 5 <= 31 { v(lane + 5) } else { v(lane) },
            if lane % 8 + 3 <= 7 {
                v(lane + 3)
            } else {
                v(lane)
            },
            v(lane ^ 9),
            v(lane ^ 4),
            (0..32).filter(|l| l % 3 == 0).fold(0u32, |m, l| m | 1 << l) as i32,
            1,
            (0..32).map(v).sum(),
            if lane < 16 { v(lane ^ 1) } else { -1 },
        ];
        assert_eq!(&got[tid * 12..tid * 12 + 12], &want, "thread {tid}");
    }
}

#[test]
fn shuffle_from_a_missing_lane_is_an_error() {
    let dev = EmuDevice::new();
    let out = dev.alloc(4 * 48 * 12).unwrap();
    // 48 threads: warp 1 has lanes 0-15 only, and lane 1 reads lane 7 * 1 ... 7 * 15 % 32.
    let e = dev
        .launch(
            "emu_test_warp_ops",
            LaunchConfig::linear(1, 48, 0),
            &[out.into()],
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("emu_test_warp_ops") && e.contains("which did not take part"),
        "{e}"
    );
}

#[test]
fn block_reductions() {
    let dev = EmuDevice::new();
    let (blocks, threads) = (3usize, 128usize);
    let x = values(blocks * threads, 5);
    let xp = upload_new(&dev, &x).unwrap();
    let out = dev.alloc(4 * 3 * blocks).unwrap();
    let cfg = LaunchConfig::linear(blocks as u32, threads as u32, 0);
    dev.launch("emu_test_block_ops", cfg, &[out.into(), xp.into()])
        .unwrap();
    let got: Vec<f32> = download_vec(&dev, out, 3 * blocks).unwrap();
    for b in 0..blocks {
        let row = &x[b * threads..(b + 1) * threads];
        let sum: f64 = row.iter().map(|&v| v as f64).sum();
        assert!(
            (got[3 * b] as f64 - sum).abs() < 1e-5,
            "block {b}: sum {} want {sum}",
            got[3 * b]
        );
        assert_eq!(
            got[3 * b + 1],
            row.iter().cloned().fold(f32::MIN, f32::max),
            "block {b}: max"
        );
        assert_eq!(
            got[3 * b + 2],
            row.iter().filter(|&&v| v > 0.0).count() as f32,
            "block {b}: count"
        );
    }
}

/// ldmatrix (x4, x2, x2.trans, x4.trans) + mma.m16n8k16 against a plain matmul.
#[test]
fn mma_and_ldmatrix_match_a_plain_matmul() {
    let dev = EmuDevice::new();
    let a: Vec<bf16> = values(256, 1).into_iter().map(bf16::from_f32).collect(); // [16][16] m x k
    let b: Vec<bf16> = values(256, 2).into_iter().map(bf16::from_f32).collect(); // [16][16] k x n
    let bt: Vec<bf16> = (0..8 * 16).map(|i| b[(i % 16) * 16 + i / 16]).collect(); // [8][16] n x k
    let c = values(256, 3);
    let (ap, bp, btp, cp) = (
        upload_new(&dev, &a).unwrap(),
        upload_new(&dev, &b).unwrap(),
        upload_new(&dev, &bt).unwrap(),
        upload_new(&dev, &c).unwrap(),
    );
    let blocks = 2;
    let d = dev.alloc(4 * blocks * 5 * 128).unwrap();
    let args: [KernelArg; 5] = [d.into(), ap.into(), btp.into(), bp.into(), cp.into()];
    dev.launch(
        "emu_test_mma",
        LaunchConfig::linear(blocks as u32, 32, 0),
        &args,
    )
    .unwrap();
    let got: Vec<f32> = download_vec(&dev, d, blocks * 5 * 128).unwrap();
    for blk in 0..blocks {
        for k in 0..5 {
            let n0 = if k == 4 { 8 } else { 0 };
            for r in 0..16 {
                for n in 0..8 {
                    let mut want = c[r * 16 + n0 + n] as f64 + blk as f64;
                    for kk in 0..16 {
                        want += a[r * 16 + kk].to_f64() * b[kk * 16 + n0 + n].to_f64();
                    }
                    let g = got[blk * 640 + k * 128 + r * 8 + n] as f64;
                    assert!(
                        (g - want).abs() < 1e-5,
                        "block {blk} result {k} [{r}][{n}]: got {g}, want {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn atomics_across_blocks() {
    let dev = EmuDevice::new();
    let n = 1000;
    let x: Vec<f32> = values(n, 9)
        .into_iter()
        .map(|v| (v * 1000.0).round())
        .collect();
    let xp = upload_new(&dev, &x).unwrap();
    let (sum, mx, count) = (
        upload_new(&dev, &[0f32]).unwrap(),
        upload_new(&dev, &[i32::MIN]).unwrap(),
        upload_new(&dev, &[0u32]).unwrap(),
    );
    let args = [
        sum.into(),
        mx.into(),
        count.into(),
        xp.into(),
        KernelArg::I32(n as i32),
    ];
    dev.launch("emu_test_atomics", LaunchConfig::linear(4, 256, 0), &args)
        .unwrap();
    assert_eq!(
        download_vec::<f32>(&dev, sum, 1).unwrap()[0],
        x.iter().sum::<f32>()
    ); // integers: exact
    assert_eq!(
        download_vec::<i32>(&dev, mx, 1).unwrap()[0],
        x.iter().map(|&v| v as i32).max().unwrap()
    );
    assert_eq!(download_vec::<u32>(&dev, count, 1).unwrap()[0], n as u32);
}

#[test]
fn bf16_and_half_round_to_nearest_even() {
    let mut x: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        65504.0,
        65519.0,
        65520.0,
        1e-8,
        6e-8,
        2.9802322e-8,
        2.9802326e-8,
        6.1e-5,
        -3.0e-6,
        3.4e38,
        -3.4e38,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MIN_POSITIVE,
        1e-40,
    ];
    let mut s = 0x1234_5678u32;
    for _ in 0..20000 {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        let f = f32::from_bits(s);
        if !f.is_nan() {
            x.push(f);
        }
    }
    x.push(f32::NAN);
    let dev = EmuDevice::new();
    let xp = upload_new(&dev, &x).unwrap();
    let (bp, hp) = (
        dev.alloc(2 * x.len()).unwrap(),
        dev.alloc(2 * x.len()).unwrap(),
    );
    let args = [
        bp.into(),
        hp.into(),
        xp.into(),
        KernelArg::I32(x.len() as i32),
    ];
    dev.launch("emu_test_convert", LaunchConfig::linear(8, 128, 0), &args)
        .unwrap();
    let bf: Vec<u16> = download_vec(&dev, bp, x.len()).unwrap();
    let hf: Vec<u16> = download_vec(&dev, hp, x.len()).unwrap();
    for (i, &v) in x.iter().enumerate() {
        let (wb, wh) = if v.is_nan() {
            (0x7fff, 0x7fff)
        } else {
            (bf16::from_f32(v).to_bits(), f16::from_f32(v).to_bits())
        };
        assert_eq!(bf[i], wb, "bf16({v:e}) = {:#06x}, want {wb:#06x}", bf[i]);
        assert_eq!(hf[i], wh, "half({v:e}) = {:#06x}, want {wh:#06x}", hf[i]);
    }
}

#[test]
fn dynamic_shared_memory() {
    let dev = EmuDevice::new();
    let (blocks, threads) = (3usize, 96usize);
    let x = values(blocks * threads, 4);
    let xp = upload_new(&dev, &x).unwrap();
    let out = dev.alloc(4 * x.len()).unwrap();
    let cfg = LaunchConfig::linear(blocks as u32, threads as u32, 4 * threads as u32);
    dev.launch("emu_test_dynamic_smem", cfg, &[out.into(), xp.into()])
        .unwrap();
    let got: Vec<f32> = download_vec(&dev, out, x.len()).unwrap();
    for b in 0..blocks {
        for t in 0..threads {
            assert_eq!(got[b * threads + t], x[b * threads + threads - 1 - t]);
        }
    }
}

#[test]
fn deadlock_times_out_with_a_message() {
    let dev = EmuDevice::new();
    dev.set_barrier_timeout(Duration::from_millis(300));
    let out = dev.alloc(4 * 64).unwrap();
    let t = Instant::now();
    let e = dev
        .launch(
            "emu_test_deadlock",
            LaunchConfig::linear(1, 64, 0),
            &[out.into()],
        )
        .unwrap_err()
        .to_string();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    for want in [
        "emu_test_deadlock",
        "block (0,0,0)",
        "timed out",
        "threads 0-15: waiting in __syncwarp at kernels/tests/emu_selftest.cu:",
        "threads 16-63: waiting at __syncthreads",
    ] {
        assert!(e.contains(want), "missing {want:?} in: {e}");
    }
}

#[test]
fn divergent_syncthreads_is_an_error() {
    let dev = EmuDevice::new();
    let out = dev.alloc(4 * 64).unwrap();
    let e = dev
        .launch(
            "emu_test_divergent_sync",
            LaunchConfig::linear(1, 64, 0),
            &[out.into()],
        )
        .unwrap_err()
        .to_string();
    for want in [
        "emu_test_divergent_sync",
        "different __syncthreads",
        "threads 0-31: waiting at __syncthreads at kernels/tests/emu_selftest.cu:",
        "threads 32-63: waiting at",
    ] {
        assert!(e.contains(want), "missing {want:?} in: {e}");
    }
}

#[test]
fn new_memory_is_poisoned_and_out_of_bounds_writes_are_caught() {
    let dev = EmuDevice::new();
    let out = dev.alloc(4 * 100).unwrap();
    let fresh: Vec<u32> = download_vec(&dev, out, 100).unwrap();
    assert!(fresh.iter().all(|&v| v == u32::MAX));
    if asan_enabled() {
        return; // AddressSanitizer would (rightly) abort the process on the write below
    }
    let e = dev.launch(
        "emu_test_out_of_bounds",
        LaunchConfig::linear(1, 128, 0),
        &[out.into(), KernelArg::I32(100)],
    );
    let e = e.unwrap_err().to_string();
    assert!(
        e.contains(
            "emu_test_out_of_bounds wrote out of bounds: byte +400 of the 400-byte allocation"
        ),
        "{e}"
    );
    // The guard was restored: the next launch is clean.
    dev.launch(
        "emu_test_out_of_bounds",
        LaunchConfig::linear(1, 128, 0),
        &[out.into(), KernelArg::I32(99)],
    )
    .unwrap();
}

#[test]
#[should_panic(expected = "double free")]
fn double_free_panics() {
    let dev = EmuDevice::new();
    let p = dev.alloc(8).unwrap();
    dev.free(p);
    dev.free(p);
}

#[test]
fn gemm_is_hf_linear() {
    use onelayer::backend::cuda::device::GemmArgs;
    let dev = EmuDevice::new();
    let (m, n, k) = (5, 7, 33);
    let x: Vec<bf16> = values(m * k, 21).into_iter().map(bf16::from_f32).collect();
    let w: Vec<bf16> = values(n * k, 22).into_iter().map(bf16::from_f32).collect();
    let (xp, wp) = (upload_new(&dev, &x).unwrap(), upload_new(&dev, &w).unwrap());
    for out_f32 in [true, false] {
        let out = dev.alloc(m * n * if out_f32 { 4 } else { 2 }).unwrap();
        dev.gemm(&GemmArgs {
            out,
            out_f32,
            x: xp,
            w: wp,
            m,
            n,
            k,
        })
        .unwrap();
        let got: Vec<f32> = if out_f32 {
            download_vec(&dev, out, m * n).unwrap()
        } else {
            download_vec::<bf16>(&dev, out, m * n)
                .unwrap()
                .iter()
                .map(|v| v.to_f32())
                .collect()
        };
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k)
                    .map(|t| x[i * k + t].to_f64() * w[j * k + t].to_f64())
                    .sum();
                let tol = if out_f32 {
                    1e-5
                } else {
                    want.abs() / 128.0 + 1e-6
                };
                let g = got[i * n + j] as f64;
                assert!(
                    (g - want).abs() <= tol,
                    "out_f32 {out_f32} [{i}][{j}]: got {g}, want {want}"
                );
            }
        }
    }
    // Out of range: w too short for n.
    let out = dev.alloc(4 * m * (n + 1)).unwrap();
    let e = dev
        .gemm(&GemmArgs {
            out,
            out_f32: true,
            x: xp,
            w: wp,
            m,
            n: n + 1,
            k,
        })
        .unwrap_err();
    assert!(e.to_string().contains("gemm w"), "{e}");
}
