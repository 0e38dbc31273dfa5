// AdamW step on the f32 master copy of the trained parameters (torch.optim.AdamW).
//
// Math (t = step, 1-based; g = grad * grad_scale, the global-norm clip factor):
//   p *= 1 - lr * weight_decay                      (decoupled weight decay)
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
//   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps),  bc1 = 1 - beta1^t, bc2 = 1 - beta2^t
//   param_bf16 = bf16(p)                              (the forward's copy; may be null)
// Shapes: param, m, v, grad [n] f32; param_bf16 [n] bf16. bc1, bc2 come from the host.
// Saves: m, v (the optimizer state). Launch: grid-stride, 256 threads, any grid.
// Writes: param, m, v, param_bf16 (= in place).

extern "C" __global__ void __launch_bounds__(256)
adamw_step_f32(float* param, float* m, float* v, bf16* param_bf16, const float* grad, int n, float lr,
               float beta1, float beta2, float eps, float weight_decay, float bc1, float bc2, float grad_scale) {
    const int stride = gridDim.x * blockDim.x;
    const float step_size = lr / bc1;
    const float inv_sqrt_bc2 = 1.f / sqrtf(bc2);
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float g = grad[i] * grad_scale;
        float p = param[i] * (1.f - lr * weight_decay);
        const float mi = beta1 * m[i] + (1.f - beta1) * g;
        const float vi = beta2 * v[i] + (1.f - beta2) * g * g;
        p -= step_size * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps);
        m[i] = mi;
        v[i] = vi;
        param[i] = p;
        if (param_bf16 != nullptr) param_bf16[i] = __float2bfloat16(p);
    }
}
