//! AdamW on the trained parameters only, exactly as `torch.optim.AdamW` (decoupled
//! weight decay applied first, bias corrections on m and v). The CPU reference of
//! `kernels/adamw.cu`. Defaults as verl's actor: lr 1e-6, betas 0.9/0.999, eps 1e-8,
//! weight decay 0.01.

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            lr: 1e-6,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamW {
    /// This optimizer with the learning rate multiplied by `scale` (a per-layer
    /// multiplier; `scale` 1 leaves every value bit-identical). The decoupled weight
    /// decay `lr * weight_decay` scales with it, as for a torch parameter group's lr.
    pub fn scaled(&self, scale: f32) -> AdamW {
        AdamW {
            lr: self.lr * scale,
            ..*self
        }
    }

    /// Bias corrections `(1 - beta1^t, 1 - beta2^t)` for step `t` (1-based), computed
    /// in f64 and passed to the kernel so both backends use the same values.
    pub fn bias_corrections(&self, step: u64) -> (f32, f32) {
        let t = step as i32;
        (
            (1.0 - (self.beta1 as f64).powi(t)) as f32,
            (1.0 - (self.beta2 as f64).powi(t)) as f32,
        )
    }

    /// One step in place; `grad_scale` multiplies the gradient (global-norm clipping).
    pub fn step(
        &self,
        param: &mut [f32],
        m: &mut [f32],
        v: &mut [f32],
        grad: &[f32],
        step: u64,
        grad_scale: f32,
    ) {
        assert!(
            param.len() == grad.len() && m.len() == grad.len() && v.len() == grad.len(),
            "adamw: lengths"
        );
        let (bc1, bc2) = self.bias_corrections(step);
        let step_size = self.lr / bc1;
        let inv_sqrt_bc2 = 1.0 / bc2.sqrt();
        for i in 0..grad.len() {
            let g = grad[i] * grad_scale;
            let mut p = param[i] * (1.0 - self.lr * self.weight_decay);
            let mi = self.beta1 * m[i] + (1.0 - self.beta1) * g;
            let vi = self.beta2 * v[i] + (1.0 - self.beta2) * g * g;
            p -= step_size * mi / (vi.sqrt() * inv_sqrt_bc2 + self.eps);
            m[i] = mi;
            v[i] = vi;
            param[i] = p;
        }
    }
}

/// The factor that clips the global gradient norm to `max_norm` (0 disables), as
/// `torch.nn.utils.clip_grad_norm_`: `min(1, max_norm / (norm + 1e-6))`.
pub fn clip_factor(grads: &[&[f32]], max_norm: f32) -> (f32, f32) {
    let norm = grads
        .iter()
        .flat_map(|g| g.iter())
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt() as f32;
    let factor = if max_norm > 0.0 {
        (max_norm / (norm + 1e-6)).min(1.0)
    } else {
        1.0
    };
    (norm, factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `torch.optim.AdamW` after the three steps of `matches_torch_adamw` (printed by
    /// torch 2.15.0 on the CPU).
    const TORCH_ADAMW_3_STEPS: [f32; 4] =
        [0.481_272_6, -0.982_303_56, 1.983_481_3, -0.006_982_104_4];

    /// Three steps against values from torch.optim.AdamW (torch 2.15, float32):
    /// p0 = [0.5, -1.0, 2.0, 0.0], grads [[0.1, -0.2, 0.3, 0.0], [0.05, 0.1, -0.3, 1.0],
    /// [-0.2, 0.0, 0.1, -1.0]], lr 1e-2, betas (0.9, 0.999), eps 1e-8, wd 0.1.
    #[test]
    fn matches_torch_adamw() {
        let opt = AdamW {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut p = vec![0.5f32, -1.0, 2.0, 0.0];
        let (mut m, mut v) = (vec![0.0; 4], vec![0.0; 4]);
        let grads = [
            [0.1f32, -0.2, 0.3, 0.0],
            [0.05, 0.1, -0.3, 1.0],
            [-0.2, 0.0, 0.1, -1.0],
        ];
        for (t, g) in grads.iter().enumerate() {
            opt.step(&mut p, &mut m, &mut v, g, t as u64 + 1, 1.0);
        }
        let want = TORCH_ADAMW_3_STEPS;
        for (a, b) in p.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{p:?} vs {want:?}");
        }
    }

    #[test]
    fn clipping() {
        let (norm, f) = clip_factor(&[&[3.0, 0.0], &[4.0]], 1.0);
        assert!((norm - 5.0).abs() < 1e-6 && (f - 0.2).abs() < 1e-6);
        assert_eq!(clip_factor(&[&[0.1]], 1.0).1, 1.0);
        assert_eq!(clip_factor(&[&[30.0]], 0.0).1, 1.0);
    }
}
