// CUDA kernels for multi-scale deformable attention (see ms_deform_attn.h for shapes and convention), and,
// for CPU tensors, a host loop over the same __host__ __device__ per-element functions (the reference the
// tests run where there is no GPU). One entry point per direction picks between them by the tensors' device.
//
// Work split: one thread per output element (b, q, m, d). The D threads of one (b, q, m) are neighbours, so
// value reads of a sampling corner are coalesced over channels, and the per-point gradients of locations and
// weights (sums over d) are reduced with warp shuffles before one atomic add per group of lanes.
#include "ms_deform_attn.h"

#include <algorithm>

#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

namespace grounding_ops {
namespace {

constexpr int kThreadsPerBlock = 256;
constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride loops cover the rest

struct Sizes {
  int64_t batch, spatial, queries, heads, channels, levels, points;
};

// Where output element idx = (b, q, m, d) (flattened) reads and writes: its (b, q, m) row of locations and
// weights, and the offset of (batch b, pixel 0, head m, channel d) in value and grad_value.
struct ElementIndex {
  int64_t channel;       // d
  int64_t row;           // (b, q, m) flattened
  int64_t value_offset;  // into [B, S, M, D]

  __host__ __device__ __forceinline__ ElementIndex(int64_t idx, const Sizes& n) {
    channel = idx % n.channels;
    row = idx / n.channels;
    const int64_t head = row % n.heads;
    const int64_t batch = row / (n.queries * n.heads);
    value_offset = batch * n.spatial * n.heads * n.channels + head * n.channels + channel;
  }
};

// One sampling point on one level: the top-left corner and the bilinear fractions. Corners outside
// [0, H) x [0, W) read as zero (padding_mode="zeros").
template <typename acc_t>
struct BilinearPoint {
  int row0, col0;
  acc_t frac_row, frac_col;  // distance from the top-left corner, in [0, 1)
  bool row0_in, row1_in, col0_in, col1_in;

  __host__ __device__ __forceinline__ BilinearPoint(acc_t x, acc_t y, int height, int width) {
    const acc_t row = y * static_cast<acc_t>(height) - acc_t(0.5);
    const acc_t col = x * static_cast<acc_t>(width) - acc_t(0.5);
    const acc_t row_floor = floor(row);
    const acc_t col_floor = floor(col);
    // Points far outside (or NaN) touch no pixel; clamp before the int cast to stay defined.
    const bool touches = row > acc_t(-1) && col > acc_t(-1) && row < height && col < width;
    row0 = touches ? static_cast<int>(row_floor) : -2;
    col0 = touches ? static_cast<int>(col_floor) : -2;
    frac_row = touches ? row - row_floor : acc_t(0);
    frac_col = touches ? col - col_floor : acc_t(0);
    row0_in = row0 >= 0;
    row1_in = touches && row0 + 1 < height;
    col0_in = col0 >= 0;
    col1_in = touches && col0 + 1 < width;
  }
};

// value_level points at (pixel 0, head m, channel d) of one level; pixels are `pixel_stride` apart.
template <typename scalar_t, typename acc_t>
struct Corners {
  acc_t v00, v01, v10, v11;  // v{row}{col}

  __host__ __device__ __forceinline__ Corners(const scalar_t* value_level, int width, int64_t pixel_stride,
                                     const BilinearPoint<acc_t>& pt) {
    const int64_t top = static_cast<int64_t>(pt.row0) * width + pt.col0;
    const int64_t bottom = top + width;
    v00 = (pt.row0_in && pt.col0_in) ? static_cast<acc_t>(value_level[top * pixel_stride]) : acc_t(0);
    v01 = (pt.row0_in && pt.col1_in) ? static_cast<acc_t>(value_level[(top + 1) * pixel_stride]) : acc_t(0);
    v10 = (pt.row1_in && pt.col0_in) ? static_cast<acc_t>(value_level[bottom * pixel_stride]) : acc_t(0);
    v11 = (pt.row1_in && pt.col1_in) ? static_cast<acc_t>(value_level[(bottom + 1) * pixel_stride]) : acc_t(0);
  }

  __host__ __device__ __forceinline__ acc_t interpolate(const BilinearPoint<acc_t>& pt) const {
    const acc_t up = acc_t(1) - pt.frac_row, left = acc_t(1) - pt.frac_col;
    return up * (left * v00 + pt.frac_col * v01) + pt.frac_row * (left * v10 + pt.frac_col * v11);
  }
};

// Output element idx = (b, q, m, d) flattened: sum over levels and points of weight * bilinear sample.
template <typename scalar_t, typename acc_t>
__host__ __device__ __forceinline__ acc_t attend_element(
    const scalar_t* value, const int64_t* spatial_shapes, const int64_t* level_start_index,
    const acc_t* sampling_locations, const acc_t* attention_weights, const Sizes& n, int64_t idx) {
  const int64_t pixel_stride = n.heads * n.channels;
  const ElementIndex e(idx, n);
  const scalar_t* value_bm = value + e.value_offset;
  const acc_t* locations = sampling_locations + e.row * n.levels * n.points * 2;
  const acc_t* weights = attention_weights + e.row * n.levels * n.points;
  acc_t acc = 0;
  for (int64_t l = 0; l < n.levels; ++l) {
    const int height = static_cast<int>(spatial_shapes[2 * l]);
    const int width = static_cast<int>(spatial_shapes[2 * l + 1]);
    const scalar_t* value_level = value_bm + level_start_index[l] * pixel_stride;
    for (int64_t p = 0; p < n.points; ++p) {
      const int64_t lp = l * n.points + p;
      const BilinearPoint<acc_t> pt(locations[2 * lp], locations[2 * lp + 1], height, width);
      const Corners<scalar_t, acc_t> corners(value_level, width, pixel_stride, pt);
      acc += weights[lp] * corners.interpolate(pt);
    }
  }
  return acc;
}

template <typename scalar_t, typename acc_t>
__global__ void ms_deform_attn_forward_kernel(
    const scalar_t* __restrict__ value,            // [B, S, M, D]
    const int64_t* __restrict__ spatial_shapes,     // [L, 2]
    const int64_t* __restrict__ level_start_index,  // [L]
    const acc_t* __restrict__ sampling_locations,   // [B, Q, M, L, P, 2]
    const acc_t* __restrict__ attention_weights,    // [B, Q, M, L, P]
    scalar_t* __restrict__ output,                  // [B, Q, M * D]
    Sizes n) {
  const int64_t total = n.batch * n.queries * n.heads * n.channels;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    output[idx] = static_cast<scalar_t>(
        attend_element(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, n, idx));
  }
}

// Gradients of one output element's (grad_out) contribution through one sampling point.
template <typename acc_t>
struct PointGradients {
  acc_t weight, x, y;  // d/d attention weight, d/d location x, d/d location y
  acc_t sample;        // grad_out * attention weight: spread over the 4 corners of the value map
};

template <typename scalar_t, typename acc_t>
__host__ __device__ __forceinline__ PointGradients<acc_t> point_gradients(
    const Corners<scalar_t, acc_t>& c, const BilinearPoint<acc_t>& pt, acc_t grad_out, acc_t weight, int height,
    int width) {
  const acc_t up = acc_t(1) - pt.frac_row, left = acc_t(1) - pt.frac_col;
  // d out / d (fractional row, col), scaled by d (row, col) / d (y, x) = (H, W)
  const acc_t d_col = up * (c.v01 - c.v00) + pt.frac_row * (c.v11 - c.v10);
  const acc_t d_row = left * (c.v10 - c.v00) + pt.frac_col * (c.v11 - c.v01);
  return {grad_out * c.interpolate(pt), grad_out * weight * width * d_col, grad_out * weight * height * d_row,
          grad_out * weight};
}

// Adds `sample` times each corner's bilinear weight into grad_level (the value gradient of one level at
// (pixel 0, m, d)); `add` is atomicAdd on the GPU and += on the host.
#pragma nv_exec_check_disable
template <typename acc_t, typename Add>
__host__ __device__ __forceinline__ void scatter_to_corners(acc_t* grad_level, int width, int64_t pixel_stride,
                                                            const BilinearPoint<acc_t>& pt, acc_t sample, Add add) {
  const acc_t up = acc_t(1) - pt.frac_row, left = acc_t(1) - pt.frac_col;
  const int64_t top = static_cast<int64_t>(pt.row0) * width + pt.col0;
  const int64_t bottom = top + width;
  if (pt.row0_in && pt.col0_in) add(grad_level + top * pixel_stride, sample * up * left);
  if (pt.row0_in && pt.col1_in) add(grad_level + (top + 1) * pixel_stride, sample * up * pt.frac_col);
  if (pt.row1_in && pt.col0_in) add(grad_level + bottom * pixel_stride, sample * pt.frac_row * left);
  if (pt.row1_in && pt.col1_in) add(grad_level + (bottom + 1) * pixel_stride, sample * pt.frac_row * pt.frac_col);
}

struct AtomicAdd {
  template <typename acc_t>
  __device__ __forceinline__ void operator()(acc_t* address, acc_t v) const { atomicAdd(address, v); }
};

struct PlainAdd {
  template <typename acc_t>
  __host__ __forceinline__ void operator()(acc_t* address, acc_t v) const { *address += v; }
};

// Sum `v` over aligned groups of `group` lanes (a power of two dividing 32); every lane of the warp calls it.
template <typename acc_t>
__device__ __forceinline__ acc_t group_sum(acc_t v, int group) {
  for (int offset = group / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

template <typename scalar_t, typename acc_t>
__global__ void ms_deform_attn_backward_kernel(
    const scalar_t* __restrict__ grad_output,       // [B, Q, M * D]
    const scalar_t* __restrict__ value,             // [B, S, M, D]
    const int64_t* __restrict__ spatial_shapes,     // [L, 2]
    const int64_t* __restrict__ level_start_index,  // [L]
    const acc_t* __restrict__ sampling_locations,   // [B, Q, M, L, P, 2]
    const acc_t* __restrict__ attention_weights,    // [B, Q, M, L, P]
    acc_t* __restrict__ grad_value,                 // [B, S, M, D], accumulated atomically
    acc_t* __restrict__ grad_sampling_locations,    // [B, Q, M, L, P, 2]
    acc_t* __restrict__ grad_attention_weights,     // [B, Q, M, L, P]
    Sizes n,
    int group) {  // lanes that share one (b, q, m) and are reduced together: gcd(D, 32)
  const int64_t total = n.batch * n.queries * n.heads * n.channels;
  const int64_t pixel_stride = n.heads * n.channels;
  // The loop bound is uniform over the block so that every lane takes part in the shuffles.
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x; base < total;
       base += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t thread_idx = base + threadIdx.x;
    const bool active = thread_idx < total;
    const int64_t idx = active ? thread_idx : total - 1;  // idle lanes read valid memory, add nothing
    const ElementIndex e(idx, n);
    const bool group_leader = active && (e.channel % group == 0);
    const acc_t grad_out = active ? static_cast<acc_t>(grad_output[idx]) : acc_t(0);
    const scalar_t* value_bm = value + e.value_offset;
    acc_t* grad_value_bm = grad_value + e.value_offset;
    const acc_t* locations = sampling_locations + e.row * n.levels * n.points * 2;
    const acc_t* weights = attention_weights + e.row * n.levels * n.points;
    for (int64_t l = 0; l < n.levels; ++l) {
      const int height = static_cast<int>(spatial_shapes[2 * l]);
      const int width = static_cast<int>(spatial_shapes[2 * l + 1]);
      const int64_t level_offset = level_start_index[l] * pixel_stride;
      for (int64_t p = 0; p < n.points; ++p) {
        const int64_t lp = l * n.points + p;
        const BilinearPoint<acc_t> pt(locations[2 * lp], locations[2 * lp + 1], height, width);
        const Corners<scalar_t, acc_t> c(value_bm + level_offset, width, pixel_stride, pt);
        const PointGradients<acc_t> g = point_gradients(c, pt, grad_out, weights[lp], height, width);
        if (active && g.sample != acc_t(0)) {
          scatter_to_corners(grad_value_bm + level_offset, width, pixel_stride, pt, g.sample, AtomicAdd{});
        }
        const acc_t grad_weight = group_sum(g.weight, group);
        const acc_t grad_x = group_sum(g.x, group);
        const acc_t grad_y = group_sum(g.y, group);
        if (group_leader) {
          const int64_t point = e.row * n.levels * n.points + lp;
          atomicAdd(grad_attention_weights + point, grad_weight);
          atomicAdd(grad_sampling_locations + 2 * point, grad_x);
          atomicAdd(grad_sampling_locations + 2 * point + 1, grad_y);
        }
      }
    }
  }
}

Sizes sizes_of(const at::Tensor& value, const at::Tensor& sampling_locations) {
  return Sizes{value.size(0),
               value.size(1),
               sampling_locations.size(1),
               value.size(2),
               value.size(3),
               sampling_locations.size(3),
               sampling_locations.size(4)};
}

int blocks_for(int64_t total) {
  return static_cast<int>(std::min<int64_t>((total + kThreadsPerBlock - 1) / kThreadsPerBlock, kMaxBlocks));
}

}  // namespace

void run_ms_deform_attn_forward(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    at::Tensor& output) {
  const Sizes n = sizes_of(value, sampling_locations);
  const int64_t total = n.batch * n.queries * n.heads * n.channels;
  if (total == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, value.scalar_type(),
                                  "ms_deform_attn_forward", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    const scalar_t* v = value.const_data_ptr<scalar_t>();
    const int64_t* shapes = spatial_shapes.const_data_ptr<int64_t>();
    const int64_t* starts = level_start_index.const_data_ptr<int64_t>();
    const acc_t* locations = sampling_locations.const_data_ptr<acc_t>();
    const acc_t* weights = attention_weights.const_data_ptr<acc_t>();
    scalar_t* out = output.mutable_data_ptr<scalar_t>();
    if (value.is_cuda()) {
      const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
      ms_deform_attn_forward_kernel<scalar_t, acc_t><<<blocks_for(total), kThreadsPerBlock, 0, stream>>>(
          v, shapes, starts, locations, weights, out, n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    for (int64_t idx = 0; idx < total; ++idx) {
      out[idx] = static_cast<scalar_t>(attend_element(v, shapes, starts, locations, weights, n, idx));
    }
  });
}

void run_ms_deform_attn_backward(
    const at::Tensor& grad_output,
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    at::Tensor& grad_value,
    at::Tensor& grad_sampling_locations,
    at::Tensor& grad_attention_weights) {
  const Sizes n = sizes_of(value, sampling_locations);
  const int64_t total = n.batch * n.queries * n.heads * n.channels;
  if (total == 0) return;
  const int64_t pixel_stride = n.heads * n.channels;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, value.scalar_type(),
                                  "ms_deform_attn_backward", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    const scalar_t* grad_out = grad_output.const_data_ptr<scalar_t>();
    const scalar_t* v = value.const_data_ptr<scalar_t>();
    const int64_t* shapes = spatial_shapes.const_data_ptr<int64_t>();
    const int64_t* starts = level_start_index.const_data_ptr<int64_t>();
    const acc_t* locations = sampling_locations.const_data_ptr<acc_t>();
    const acc_t* weights = attention_weights.const_data_ptr<acc_t>();
    acc_t* grad_v = grad_value.mutable_data_ptr<acc_t>();
    acc_t* grad_loc = grad_sampling_locations.mutable_data_ptr<acc_t>();
    acc_t* grad_w = grad_attention_weights.mutable_data_ptr<acc_t>();
    if (value.is_cuda()) {
      // Largest power of two dividing both D and the warp size: such lane groups never straddle a (b, q, m).
      int group = 1;
      while (group < 32 && n.channels % (group * 2) == 0) group *= 2;
      const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
      ms_deform_attn_backward_kernel<scalar_t, acc_t><<<blocks_for(total), kThreadsPerBlock, 0, stream>>>(
          grad_out, v, shapes, starts, locations, weights, grad_v, grad_loc, grad_w, n, group);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    // The host loop: the kernel's per-point arithmetic, with plain adds instead of shuffles and atomics.
    for (int64_t idx = 0; idx < total; ++idx) {
      const ElementIndex e(idx, n);
      for (int64_t l = 0; l < n.levels; ++l) {
        const int height = static_cast<int>(shapes[2 * l]);
        const int width = static_cast<int>(shapes[2 * l + 1]);
        const int64_t offset = e.value_offset + starts[l] * pixel_stride;
        for (int64_t p = 0; p < n.points; ++p) {
          const int64_t point = e.row * n.levels * n.points + l * n.points + p;
          const BilinearPoint<acc_t> pt(locations[2 * point], locations[2 * point + 1], height, width);
          const Corners<scalar_t, acc_t> c(v + offset, width, pixel_stride, pt);
          const PointGradients<acc_t> g =
              point_gradients(c, pt, static_cast<acc_t>(grad_out[idx]), weights[point], height, width);
          scatter_to_corners(grad_v + offset, width, pixel_stride, pt, g.sample, PlainAdd{});
          grad_w[point] += g.weight;
          grad_loc[2 * point] += g.x;
          grad_loc[2 * point + 1] += g.y;
        }
      }
    }
  });
}

}  // namespace grounding_ops
