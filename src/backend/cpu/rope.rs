//! Rotary position embedding, half-split form (transformers' `rotate_half`).
//!
//! The inverse frequencies are rounded to f32 and the angle `pos * inv_freq` is
//! formed in the compute type, as transformers does, so long positions agree too.
//! The backward pass is the same rotation by the negated angle (a rotation's
//! transpose is its inverse).

use super::Real;

/// `inv_freq[i] = theta^(-2i / head_dim)`, `i < head_dim / 2`, rounded to f32.
pub fn inv_freq(head_dim: usize, theta: f32) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| (1.0 / (theta as f64).powf((2 * i) as f64 / head_dim as f64)) as f32)
        .collect()
}

/// x `[tokens, heads, head_dim]` in place; `pos[t]` is the position of token t.
pub fn rope<T: Real>(
    x: &mut [T],
    pos: &[u32],
    tokens: usize,
    heads: usize,
    head_dim: usize,
    theta: f32,
) {
    rotate(x, pos, tokens, heads, head_dim, theta, false);
}

/// Backward of `rope`: dx `[tokens, heads, head_dim]` in place (dy in, dx out),
/// rotated by `-pos * inv_freq`.
pub fn rope_backward<T: Real>(
    dx: &mut [T],
    pos: &[u32],
    tokens: usize,
    heads: usize,
    head_dim: usize,
    theta: f32,
) {
    rotate(dx, pos, tokens, heads, head_dim, theta, true);
}

fn rotate<T: Real>(
    x: &mut [T],
    pos: &[u32],
    tokens: usize,
    heads: usize,
    head_dim: usize,
    theta: f32,
    inverse: bool,
) {
    assert_eq!(x.len(), tokens * heads * head_dim, "rope: x");
    assert_eq!(pos.len(), tokens, "rope: pos");
    let half = head_dim / 2;
    let freqs = inv_freq(head_dim, theta);
    let mut cos = vec![T::zero(); half];
    let mut sin = vec![T::zero(); half];
    for (t, token) in x.chunks_mut(heads * head_dim).enumerate() {
        for i in 0..half {
            let angle = T::from_f32(pos[t] as f32) * T::from_f32(freqs[i]);
            cos[i] = angle.cos();
            sin[i] = if inverse { -angle.sin() } else { angle.sin() };
        }
        for head in token.chunks_mut(head_dim) {
            let (x1, x2) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                x1[i] = a * cos[i] - b * sin[i];
                x2[i] = b * cos[i] + a * sin[i];
            }
        }
    }
}
