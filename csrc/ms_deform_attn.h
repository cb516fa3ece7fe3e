// Multi-scale deformable attention: the entry points shared by the op registration (ms_deform_attn_ops.cpp)
// and the kernels (ms_deform_attn_cuda.cu).
//
// Shapes: value [B, S, M, D] (S = sum_l H_l * W_l), spatial_shapes [L, 2] int64 (H, W),
// level_start_index [L] int64, sampling_locations [B, Q, M, L, P, 2] (x, y in [0, 1]),
// attention_weights [B, Q, M, L, P]. Output [B, Q, M * D].
//
// Sampling convention (same as grid_sample(align_corners=False, padding_mode="zeros")): a location (x, y)
// is the pixel coordinate (x * W - 0.5, y * H - 0.5), interpolated bilinearly, corners outside the map are 0.
#pragma once

#include <ATen/core/Tensor.h>

namespace grounding_ops {

// All tensors contiguous and on one device: CUDA runs the kernels; CPU runs the same per-element arithmetic
// in a host loop (a reference where there is no GPU). value and output share one floating dtype; locations
// and weights are in the accumulation dtype (float32, or float64 when value is float64).
void run_ms_deform_attn_forward(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    at::Tensor& output);

// grad_value, grad_sampling_locations and grad_attention_weights are zero-initialised buffers in the
// accumulation dtype; the kernels add into them atomically (the host loop plainly).
void run_ms_deform_attn_backward(
    const at::Tensor& grad_output,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    at::Tensor& grad_value,
    at::Tensor& grad_sampling_locations,
    at::Tensor& grad_attention_weights);

}  // namespace grounding_ops
