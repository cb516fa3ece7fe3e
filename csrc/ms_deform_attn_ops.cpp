// Registers multi-scale deformable attention as the PyTorch operators
//   grounding_ops::ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
//                                 attention_weights) -> Tensor [B, Q, M * D]
//   grounding_ops::ms_deform_attn_backward(grad_output, <same inputs>) -> (grad_value,
//                                 grad_sampling_locations, grad_attention_weights)
// with CUDA kernels, and for CPU tensors the kernels' per-element code looped on the host (a slow reference
// for tests; the model's CPU path is grounding/ops/ms_deform_attn_torch.py). Autograd and the fake
// (shape-only) kernels are registered from Python (grounding/ops/cuda_extension.py) so torch.compile can
// trace the op.
#include "ms_deform_attn.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

namespace grounding_ops {
namespace {

void check_inputs(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  const at::Tensor* all[] = {&value, &spatial_shapes, &level_start_index, &sampling_locations, &attention_weights};
  for (const at::Tensor* t : all) {
    TORCH_CHECK(t->device() == value.device(), "ms_deform_attn: all inputs must be on ", value.device());
  }
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn: value must be [B, S, M, D], got ", value.sizes());
  TORCH_CHECK(at::isFloatingType(value.scalar_type()), "ms_deform_attn: value must be floating point");
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2 &&
                  spatial_shapes.scalar_type() == at::kLong,
              "ms_deform_attn: spatial_shapes must be int64 [L, 2]");
  const int64_t levels = spatial_shapes.size(0);
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == levels &&
                  level_start_index.scalar_type() == at::kLong,
              "ms_deform_attn: level_start_index must be int64 [L]");
  TORCH_CHECK(sampling_locations.dim() == 6 && sampling_locations.size(0) == value.size(0) &&
                  sampling_locations.size(2) == value.size(2) && sampling_locations.size(3) == levels &&
                  sampling_locations.size(5) == 2,
              "ms_deform_attn: sampling_locations must be [B, Q, M, L, P, 2], got ", sampling_locations.sizes());
  TORCH_CHECK(attention_weights.sizes() == sampling_locations.sizes().slice(0, 5),
              "ms_deform_attn: attention_weights must be [B, Q, M, L, P], got ", attention_weights.sizes());
  TORCH_CHECK(at::isFloatingType(sampling_locations.scalar_type()) &&
                  at::isFloatingType(attention_weights.scalar_type()),
              "ms_deform_attn: sampling_locations and attention_weights must be floating point");
}

// Locations and weights are read in the accumulation dtype: a bf16 location would be off by up to half a
// pixel on a 150-pixel-wide level.
at::ScalarType accumulation_type(const at::Tensor& value) {
  return value.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor ms_deform_attn_forward(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const c10::DeviceGuard device_guard(value.device());
  const at::ScalarType acc = accumulation_type(value);
  const at::Tensor value_c = value.contiguous();
  const at::Tensor locations_c = sampling_locations.to(acc).contiguous();
  const at::Tensor weights_c = attention_weights.to(acc).contiguous();
  // [B, Q, M * D]: the same memory layout as [B, Q, M, D], which the kernel indexes
  at::Tensor output = at::empty({value.size(0), sampling_locations.size(1), value.size(2) * value.size(3)},
                                value.options());
  run_ms_deform_attn_forward(value_c, spatial_shapes.contiguous(), level_start_index.contiguous(), locations_c,
                             weights_c, output);
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward(
    const at::Tensor& grad_output,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  TORCH_CHECK(grad_output.device() == value.device(),
              "ms_deform_attn_backward: grad_output must be on ", value.device());
  TORCH_CHECK(grad_output.numel() == sampling_locations.size(0) * sampling_locations.size(1) *
                                         value.size(2) * value.size(3),
              "ms_deform_attn_backward: grad_output must be [B, Q, M * D], got ", grad_output.sizes());
  const c10::DeviceGuard device_guard(value.device());
  const at::ScalarType acc = accumulation_type(value);
  const at::TensorOptions acc_options = value.options().dtype(acc);
  at::Tensor grad_value = at::zeros(value.sizes(), acc_options);
  at::Tensor grad_locations = at::zeros(sampling_locations.sizes(), acc_options);
  at::Tensor grad_weights = at::zeros(attention_weights.sizes(), acc_options);
  run_ms_deform_attn_backward(grad_output.to(value.scalar_type()).contiguous(), value.contiguous(),
                              spatial_shapes.contiguous(), level_start_index.contiguous(),
                              sampling_locations.to(acc).contiguous(), attention_weights.to(acc).contiguous(),
                              grad_value, grad_locations, grad_weights);
  return {grad_value.to(value.scalar_type()), grad_locations.to(sampling_locations.scalar_type()),
          grad_weights.to(attention_weights.scalar_type())};
}

}  // namespace

TORCH_LIBRARY(grounding_ops, m) {
  m.def(
      "ms_deform_attn(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> Tensor");
  m.def(
      "ms_deform_attn_backward(Tensor grad_output, Tensor value, Tensor spatial_shapes, "
      "Tensor level_start_index, Tensor sampling_locations, Tensor attention_weights) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(grounding_ops, CUDA, m) {
  m.impl("ms_deform_attn", &ms_deform_attn_forward);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward);
}

TORCH_LIBRARY_IMPL(grounding_ops, CPU, m) {
  m.impl("ms_deform_attn", &ms_deform_attn_forward);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward);
}

}  // namespace grounding_ops
