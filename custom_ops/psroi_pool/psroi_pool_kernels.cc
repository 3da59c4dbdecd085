// CPU kernels of RfcnPsRoiPool / RfcnPsRoiPoolGrad, and the op kernel
// classes shared with the GPU (registered for DEVICE_GPU under GOOGLE_CUDA).
//
// Shape shorthand: B images, H x W cells, K = k*k*C channels, R RoIs, k bins
// per side, C output channels (see psroi_pool_math.h, DESIGN.md).
//
// CPU strategy. The C values of one bin are contiguous in NHWC (bin-major
// layout), so every inner loop runs over a bin's C-channel slice with the
// per-bin arithmetic (bin bounds, bilinear taps, 1/area) hoisted out.
// Bilinear bins use the separable form of the interpolation (see
// AxisWeights): each distinct cell is read (written) once per bin, with the
// summed weight of the sample points that touch it.
// The per-RoI geometry (avg cell ranges, bilinear separable weights) is
// tabulated once per call (BinTable), 2k entries per RoI, not 2 per bin.
//  * forward: one work unit per output bin (r, i, j); units are disjoint in
//    the output, so any split across threads gives the same bits.
//  * backward: one work unit per (image b, bin position (i, j), channel
//    chunk). Bin (i, j) of every RoI reads only channel block (i*k + j) of its
//    image, so units write disjoint cells of grad_features: no races, no
//    atomics. A unit zeroes its slice, then visits the RoIs of image b in
//    ascending row order, so every cell sums its contributions in one fixed
//    order whatever the thread count: the result is deterministic.
// Both use the CPU worker pool's ParallelFor with an adaptive cost estimate.

#define EIGEN_USE_THREADS
#if GOOGLE_CUDA
#ifndef EIGEN_USE_GPU
#define EIGEN_USE_GPU
#endif
#endif

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "psroi_pool_functor.h"
#include "psroi_pool_math.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/platform/threadpool.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace tensorflow {

typedef Eigen::ThreadPoolDevice CPUDevice;
#if GOOGLE_CUDA
typedef Eigen::GpuDevice GPUDevice;
#endif

using rfcn_psroi::Geometry;
using rfcn_psroi::Tap;

namespace {

thread::ThreadPool* CpuWorkers(OpKernelContext* ctx) {
  return ctx->device()->tensorflow_cpu_worker_threads()->workers;
}

// A rough count of the cells one avg bin covers, for the cost model: RoIs
// are assumed to span about half the map on each side.
int64_t EstimatedBinCells(const Geometry& g) {
  const int64_t h = std::max<int64_t>(1, g.height / (2 * g.k) + 1);
  const int64_t w = std::max<int64_t>(1, g.width / (2 * g.k) + 1);
  return h * w;
}

// The distinct cells that the n sample points of one bilinear bin read along
// one axis, with their weights summed over the points (points outside the
// map add none). The bilinear rule is separable (a point is valid iff its row
// and its column are, and its four weights are products wy * wx), so a bin is
//   sum_h sum_w Wy[h] * Wx[w] * features[h, w]
// with Wy, Wx from this function: each distinct cell is read once instead of
// 4 reads per sample point. Returns the count (<= 2n).
int AxisWeights(const Tap* taps, int n, int* cells, double* weights) {
  int m = 0;
  auto add = [&](int cell, double weight) {
    for (int q = 0; q < m; ++q) {
      if (cells[q] == cell) {
        weights[q] += weight;
        return;
      }
    }
    cells[m] = cell;
    weights[m] = weight;
    ++m;
  };
  for (int p = 0; p < n; ++p) {
    if (!taps[p].valid) continue;
    add(taps[p].lo, taps[p].wlo);
    add(taps[p].hi, taps[p].whi);
  }
  return m;
}

// Bin geometry of RoIs, tabulated per RoI: 2k axis entries per RoI instead
// of 2 per bin (k^2 bins), so the per-bin work is table lookups.
//   avg:      the cell range [lo, hi) of bin index i along y and along x;
//   bilinear: the distinct cells and summed weights (AxisWeights) of bin
//             index i along y and along x (at most 2n entries each).
// Arithmetic: psroi_pool_math.h (the functions the GPU kernels use too).
// Slots are independent: threads may fill different slots concurrently.
class BinTable {
 public:
  BinTable(const Geometry& g, int64_t capacity)
      : g_(g),
        capacity_(capacity),
        slots_(2 * g.sampling_ratio),
        y_range_(g.mode == rfcn_psroi::kAvg ? capacity * g.k * 2 : 0),
        x_range_(y_range_.size()),
        y_count_(g.mode == rfcn_psroi::kBilinear ? capacity * g.k : 0),
        x_count_(y_count_.size()),
        y_cell_(y_count_.size() * slots_),
        x_cell_(y_cell_.size()),
        y_weight_(y_cell_.size()),
        x_weight_(y_cell_.size()) {}

  // Fills `slot` with the geometry of `roi` (5 floats); `taps` is scratch
  // for sampling_ratio entries.
  void FillSlot(int64_t slot, const float* roi, Tap* taps) {
    const int k = g_.k;
    const int n = g_.sampling_ratio;
    if (g_.mode == rfcn_psroi::kAvg) {
      double ys, yl, xs, xl;
      const bool fy =
          rfcn_psroi::avg_roi_axis(roi[1], roi[3], g_.spatial_scale, &ys, &yl);
      const bool fx =
          rfcn_psroi::avg_roi_axis(roi[2], roi[4], g_.spatial_scale, &xs, &xl);
      int* yr = &y_range_[slot * k * 2];
      int* xr = &x_range_[slot * k * 2];
      for (int i = 0; i < k; ++i) {
        if (fy && fx) {
          rfcn_psroi::avg_bin_range(ys, yl, i, k, g_.height, &yr[2 * i],
                                    &yr[2 * i + 1]);
          rfcn_psroi::avg_bin_range(xs, xl, i, k, g_.width, &xr[2 * i],
                                    &xr[2 * i + 1]);
        } else {  // a non-finite corner: every bin empty
          yr[2 * i] = yr[2 * i + 1] = xr[2 * i] = xr[2 * i + 1] = 0;
        }
      }
      return;
    }
    double ys, ybin, xs, xbin;
    rfcn_psroi::bilinear_roi_axis(roi[1], roi[3], g_.spatial_scale, k, &ys,
                                  &ybin);
    rfcn_psroi::bilinear_roi_axis(roi[2], roi[4], g_.spatial_scale, k, &xs,
                                  &xbin);
    for (int i = 0; i < k; ++i) {
      const int64_t e = slot * k + i;
      for (int p = 0; p < n; ++p) {
        taps[p] = rfcn_psroi::bilinear_tap(
            rfcn_psroi::bilinear_sample_coord(ys, ybin, i, p, n), g_.height);
      }
      y_count_[e] = AxisWeights(taps, n, &y_cell_[e * slots_],
                                &y_weight_[e * slots_]);
      for (int p = 0; p < n; ++p) {
        taps[p] = rfcn_psroi::bilinear_tap(
            rfcn_psroi::bilinear_sample_coord(xs, xbin, i, p, n), g_.width);
      }
      x_count_[e] = AxisWeights(taps, n, &x_cell_[e * slots_],
                                &x_weight_[e * slots_]);
    }
  }

  // Fills slot r with row r of rois [capacity, 5], for every r, on the CPU
  // worker pool.
  void FillAll(thread::ThreadPool* workers, const float* rois) {
    const int64_t cost = 60 * g_.k * (g_.mode == rfcn_psroi::kAvg
                                          ? 2
                                          : 2 + 2 * g_.sampling_ratio);
    workers->ParallelFor(
        capacity_, thread::ThreadPool::SchedulingParams::Adaptive(cost),
        [&](int64_t begin, int64_t end) {
          std::vector<Tap> taps(g_.sampling_ratio);
          for (int64_t r = begin; r < end; ++r) {
            FillSlot(r, rois + r * 5, taps.data());
          }
        });
  }

  // avg: the cells [*h0, *h1) x [*w0, *w1) of bin (i, j) in `slot`.
  void AvgCells(int64_t slot, int i, int j, int* h0, int* h1, int* w0,
                int* w1) const {
    const int* yr = &y_range_[(slot * g_.k + i) * 2];
    const int* xr = &x_range_[(slot * g_.k + j) * 2];
    *h0 = yr[0];
    *h1 = yr[1];
    *w0 = xr[0];
    *w1 = xr[1];
  }

  // bilinear: the separable cells and weights of bin (i, j) in `slot`.
  int YCount(int64_t slot, int i) const { return y_count_[slot * g_.k + i]; }
  int XCount(int64_t slot, int j) const { return x_count_[slot * g_.k + j]; }
  const int* YCells(int64_t slot, int i) const {
    return &y_cell_[(slot * g_.k + i) * slots_];
  }
  const int* XCells(int64_t slot, int j) const {
    return &x_cell_[(slot * g_.k + j) * slots_];
  }
  const double* YWeights(int64_t slot, int i) const {
    return &y_weight_[(slot * g_.k + i) * slots_];
  }
  const double* XWeights(int64_t slot, int j) const {
    return &x_weight_[(slot * g_.k + j) * slots_];
  }

 private:
  const Geometry g_;
  const int64_t capacity_;
  const int64_t slots_;
  std::vector<int> y_range_, x_range_;
  std::vector<int> y_count_, x_count_;
  std::vector<int> y_cell_, x_cell_;
  std::vector<double> y_weight_, x_weight_;
};

}  // namespace

namespace functor {

template <typename T>
struct RfcnPsRoiPoolForward<CPUDevice, T> {
  void operator()(OpKernelContext* ctx, const Geometry& g, int64_t num_rois,
                  const T* features, const float* rois, T* output) {
    const int k = g.k;
    const int C = g.c_out;
    const int n = g.sampling_ratio;
    const int64_t bins = static_cast<int64_t>(k) * k;
    const int64_t total = num_rois * bins;
    if (total == 0 || C == 0) return;
    thread::ThreadPool* workers = CpuWorkers(ctx);
    const int64_t cost =
        g.mode == rfcn_psroi::kAvg
            ? 20 + EstimatedBinCells(g) * C * 2
            : 20 + static_cast<int64_t>(n + 1) * (n + 1) * (4 + 2 * C);

    // Units are output bins (r, i, j) in output order. A shard tabulates the
    // geometry of the RoI it is in (slot 0 of a one-RoI table) when it
    // enters it: once per RoI, plus once per shard boundary.
    auto work = [&](int64_t begin, int64_t end) {
      std::vector<float> acc_buffer(C);
      float* __restrict__ acc = acc_buffer.data();
      BinTable table(g, 1);
      std::vector<Tap> taps(n);
      int64_t tabulated = -1;
      // Pools bin (i, j) (= bin) of RoI r into out[C].
      auto pool_bin = [&](int64_t r, int bin, int i, int j,
                          T* __restrict__ out) {
        int b;
        if (!rfcn_psroi::roi_batch_index(rois[r * 5], g.batch, &b)) {
          std::fill(out, out + C, T(0.f));
          return;
        }
        if (r != tabulated) {
          table.FillSlot(0, rois + r * 5, taps.data());
          tabulated = r;
        }
        std::fill(acc, acc + C, 0.f);
        // Channel block (i*k + j) of image b, cell (0, 0).
        const T* block = features + rfcn_psroi::cell_offset(g, b, 0, 0) +
                         static_cast<int64_t>(bin) * C;
        float denom;
        if (g.mode == rfcn_psroi::kAvg) {
          int h0, h1, w0, w1;
          table.AvgCells(0, i, j, &h0, &h1, &w0, &w1);
          if (h1 <= h0 || w1 <= w0) {  // empty bin: 0 (DESIGN.md)
            std::fill(out, out + C, T(0.f));
            return;
          }
          for (int h = h0; h < h1; ++h) {
            const T* p = block + (static_cast<int64_t>(h) * g.width + w0) *
                                     g.channels;
            for (int w = w0; w < w1; ++w, p += g.channels) {
              const T* __restrict__ v = p;
              for (int c = 0; c < C; ++c) acc[c] += static_cast<float>(v[c]);
            }
          }
          denom = rfcn_psroi::bin_area(h0, h1, w0, w1);
        } else {
          const int ny = table.YCount(0, i), nx = table.XCount(0, j);
          const int* ycells = table.YCells(0, i);
          const int* xcells = table.XCells(0, j);
          const double* yw = table.YWeights(0, i);
          const double* xw = table.XWeights(0, j);
          for (int q = 0; q < ny; ++q) {
            const T* row = block + static_cast<int64_t>(ycells[q]) * g.width *
                                       g.channels;
            for (int t = 0; t < nx; ++t) {
              const float wt = static_cast<float>(yw[q] * xw[t]);
              const T* __restrict__ v =
                  row + static_cast<int64_t>(xcells[t]) * g.channels;
              for (int c = 0; c < C; ++c) {
                acc[c] += wt * static_cast<float>(v[c]);
              }
            }
          }
          denom = rfcn_psroi::sample_count(n);
        }
        // One reciprocal per bin, no division per element (<= 1 ulp from
        // acc / denom).
        const float inv = 1.f / denom;
        for (int c = 0; c < C; ++c) out[c] = static_cast<T>(acc[c] * inv);
      };
      // Walk (r, i, j) incrementally: no integer division per unit.
      int64_t r = begin / bins;
      int bin = static_cast<int>(begin - r * bins);
      int i = bin / k;
      int j = bin - i * k;
      for (int64_t u = begin; u < end; ++u) {
        pool_bin(r, bin, i, j, output + u * C);
        if (++j == k) {
          j = 0;
          if (++i == k) {
            i = 0;
            ++r;
          }
        }
        bin = i * k + j;
      }
    };
    workers->ParallelFor(
        total, thread::ThreadPool::SchedulingParams::Adaptive(cost), work);
  }
};

template <typename T>
struct RfcnPsRoiPoolBackward<CPUDevice, T> {
  void operator()(OpKernelContext* ctx, const Geometry& g, int64_t num_rois,
                  const T* grad, const float* rois, T* grad_features) {
    constexpr bool kFloat = std::is_same<T, float>::value;
    const int k = g.k;
    const int C = g.c_out;
    const int n = g.sampling_ratio;
    const int64_t bins = static_cast<int64_t>(k) * k;
    const int64_t plane = static_cast<int64_t>(g.height) * g.width;
    if (g.batch == 0 || plane == 0 || C == 0) return;
    thread::ThreadPool* workers = CpuWorkers(ctx);
    BinTable table(g, num_rois);
    table.FillAll(workers, rois);

    // RoI rows of each image, ascending (CSR): rows of image b are
    // order[start[b] .. start[b+1]). Invalid batch indices (rejected by the
    // op on CPU) are skipped, matching the forward's zero output.
    std::vector<int64_t> start(g.batch + 1, 0);
    std::vector<int> batch_of(num_rois, -1);
    for (int64_t r = 0; r < num_rois; ++r) {
      int b;
      if (rfcn_psroi::roi_batch_index(rois[r * 5], g.batch, &b)) {
        batch_of[r] = b;
        ++start[b + 1];
      }
    }
    for (int b = 0; b < g.batch; ++b) start[b + 1] += start[b];
    std::vector<int64_t> order(start[g.batch]);
    {
      std::vector<int64_t> fill(start.begin(), start.end() - 1);
      for (int64_t r = 0; r < num_rois; ++r) {
        if (batch_of[r] >= 0) order[fill[batch_of[r]]++] = r;
      }
    }

    // Split the C channels of a bin into chunks when (image, bin) units are
    // too few to keep every thread busy (k = 1, say). Chunks of >= 8.
    const int64_t base_units = static_cast<int64_t>(g.batch) * bins;
    const int64_t want = 4 * static_cast<int64_t>(workers->NumThreads());
    int64_t chunks = 1;
    if (base_units < want) {
      chunks = std::min<int64_t>((want + base_units - 1) / base_units,
                                 std::max<int64_t>(1, C / 8));
    }
    const int chunk = static_cast<int>((C + chunks - 1) / chunks);
    chunks = (C + chunk - 1) / chunk;
    const int64_t total = base_units * chunks;
    const int64_t rois_per_image =
        std::max<int64_t>(1, static_cast<int64_t>(order.size()) / g.batch);
    const int64_t per_roi =
        g.mode == rfcn_psroi::kAvg
            ? 20 + EstimatedBinCells(g) * chunk * 2
            : 20 + static_cast<int64_t>(n + 1) * (n + 1) * (4 + 2 * chunk);
    const int64_t cost = rois_per_image * per_roi + plane * chunk;

    auto work = [&](int64_t begin, int64_t end) {
      std::vector<float> gs_buffer(chunk);
      float* __restrict__ gs = gs_buffer.data();
      // float accumulation buffer for half / bfloat16 outputs.
      std::vector<float> scratch(kFloat ? 0 : plane * chunk);
      for (int64_t u = begin; u < end; ++u) {
        const int b = static_cast<int>(u / (bins * chunks));
        const int64_t rem = u - static_cast<int64_t>(b) * bins * chunks;
        const int bin = static_cast<int>(rem / chunks);
        const int c0 = static_cast<int>(rem - static_cast<int64_t>(bin) *
                                                  chunks) * chunk;
        const int len = std::min(chunk, C - c0);
        const int i = bin / k;
        const int j = bin - i * k;
        const int64_t ch0 = static_cast<int64_t>(bin) * C + c0;
        // Cell (h, w) of this unit's slice lives at dst + (h*W + w)*stride.
        float* dst;
        int64_t stride;
        if constexpr (kFloat) {
          dst = reinterpret_cast<float*>(grad_features) +
                rfcn_psroi::cell_offset(g, b, 0, 0) + ch0;
          stride = g.channels;
          for (int64_t q = 0; q < plane; ++q) {
            std::memset(dst + q * stride, 0, sizeof(float) * len);
          }
        } else {
          dst = scratch.data();
          stride = len;
          std::fill(scratch.begin(), scratch.begin() + plane * len, 0.f);
        }
        for (int64_t o = start[b]; o < start[b + 1]; ++o) {
          const int64_t r = order[o];
          const T* gr = grad + (r * bins + bin) * C + c0;
          if (g.mode == rfcn_psroi::kAvg) {
            int h0, h1, w0, w1;
            table.AvgCells(r, i, j, &h0, &h1, &w0, &w1);
            if (h1 <= h0 || w1 <= w0) continue;
            const float inv_area = 1.f / rfcn_psroi::bin_area(h0, h1, w0, w1);
            for (int c = 0; c < len; ++c) {
              gs[c] = static_cast<float>(gr[c]) * inv_area;
            }
            for (int h = h0; h < h1; ++h) {
              float* d =
                  dst + (static_cast<int64_t>(h) * g.width + w0) * stride;
              for (int w = w0; w < w1; ++w, d += stride) {
                float* __restrict__ dc = d;
                for (int c = 0; c < len; ++c) dc[c] += gs[c];
              }
            }
          } else {
            const int ny = table.YCount(r, i), nx = table.XCount(r, j);
            if (ny == 0 || nx == 0) continue;
            const int* ycells = table.YCells(r, i);
            const int* xcells = table.XCells(r, j);
            const double* yw = table.YWeights(r, i);
            const double* xw = table.XWeights(r, j);
            const float inv_count = 1.f / rfcn_psroi::sample_count(n);
            for (int c = 0; c < len; ++c) {
              gs[c] = static_cast<float>(gr[c]) * inv_count;
            }
            for (int q = 0; q < ny; ++q) {
              float* row = dst + static_cast<int64_t>(ycells[q]) * g.width *
                                     stride;
              for (int t = 0; t < nx; ++t) {
                const float wt = static_cast<float>(yw[q] * xw[t]);
                float* __restrict__ d = row + xcells[t] * stride;
                for (int c = 0; c < len; ++c) d[c] += gs[c] * wt;
              }
            }
          }
        }
        if constexpr (!kFloat) {
          T* out = grad_features + rfcn_psroi::cell_offset(g, b, 0, 0) + ch0;
          for (int64_t q = 0; q < plane; ++q) {
            for (int c = 0; c < len; ++c) {
              out[q * g.channels + c] = static_cast<T>(scratch[q * len + c]);
            }
          }
        }
      }
    };
    workers->ParallelFor(
        total, thread::ThreadPool::SchedulingParams::Adaptive(cost), work);
  }
};

}  // namespace functor

namespace {

struct PsRoiPoolAttrs {
  int output_size;
  float spatial_scale;
  std::string mode;
  int sampling_ratio;
};

absl::Status ReadAttrs(OpKernelConstruction* ctx, PsRoiPoolAttrs* a) {
  TF_RETURN_IF_ERROR(ctx->GetAttr("output_size", &a->output_size));
  TF_RETURN_IF_ERROR(ctx->GetAttr("spatial_scale", &a->spatial_scale));
  TF_RETURN_IF_ERROR(ctx->GetAttr("mode", &a->mode));
  TF_RETURN_IF_ERROR(ctx->GetAttr("sampling_ratio", &a->sampling_ratio));
  if (a->output_size < 1) {
    return errors::InvalidArgument(
        "RfcnPsRoiPool: output_size must be >= 1, got ", a->output_size);
  }
  if (a->sampling_ratio < 1) {
    return errors::InvalidArgument(
        "RfcnPsRoiPool: sampling_ratio must be >= 1, got ", a->sampling_ratio);
  }
  if (a->mode != "avg" && a->mode != "bilinear") {
    return errors::InvalidArgument(
        "RfcnPsRoiPool: mode must be 'avg' or 'bilinear', got '", a->mode,
        "'");
  }
  if (!(std::isfinite(a->spatial_scale) && a->spatial_scale > 0.f)) {
    return errors::InvalidArgument(
        "RfcnPsRoiPool: spatial_scale must be a finite number > 0, got ",
        a->spatial_scale);
  }
  return absl::OkStatus();
}

// Checks features [B, H, W, k*k*C] and rois [R, 5]; fills the geometry.
absl::Status CheckInputs(const Tensor& features, const Tensor& rois,
                         const PsRoiPoolAttrs& a, Geometry* g) {
  if (features.dims() != 4) {
    return errors::InvalidArgument(
        "RfcnPsRoiPool: features must be rank 4 [B, H, W, k*k*C], got shape ",
        features.shape().DebugString());
  }
  for (int d = 0; d < 4; ++d) {
    if (features.dim_size(d) > INT_MAX) {
      return errors::InvalidArgument(
          "RfcnPsRoiPool: features dimension ", d, " is too large (",
          features.dim_size(d), " > ", INT_MAX, ")");
    }
  }
  if (features.dim_size(1) < 1 || features.dim_size(2) < 1) {
    return errors::InvalidArgument(
        "RfcnPsRoiPool: features height and width must be >= 1, got shape ",
        features.shape().DebugString());
  }
  if (rois.dims() != 2 || rois.dim_size(1) != 5) {
    return errors::InvalidArgument(
        "RfcnPsRoiPool: rois must be [R, 5] rows (batch_index, y1, x1, y2, "
        "x2), got shape ",
        rois.shape().DebugString());
  }
  const int64_t k = a.output_size;
  const int64_t channels = features.dim_size(3);
  if (channels % (k * k) != 0) {
    return errors::InvalidArgument(
        "RfcnPsRoiPool: features channels (", channels,
        ") must be divisible by output_size^2 = ", k, "*", k, " = ", k * k,
        " (the bin-major layout k*k*C)");
  }
  g->batch = static_cast<int>(features.dim_size(0));
  g->height = static_cast<int>(features.dim_size(1));
  g->width = static_cast<int>(features.dim_size(2));
  g->channels = static_cast<int>(channels);
  g->k = a.output_size;
  g->c_out = static_cast<int>(channels / (k * k));
  g->spatial_scale = a.spatial_scale;
  g->sampling_ratio = a.sampling_ratio;
  g->mode = a.mode == "avg" ? rfcn_psroi::kAvg : rfcn_psroi::kBilinear;
  return absl::OkStatus();
}

// Host-side check that every batch index lies in [0, B) (CPU kernels only:
// on GPU the rois live in device memory and an out-of-range row pools 0).
absl::Status CheckBatchIndices(const Tensor& rois, int batch) {
  const auto r = rois.matrix<float>();
  for (int64_t row = 0; row < rois.dim_size(0); ++row) {
    int b;
    if (!rfcn_psroi::roi_batch_index(r(row, 0), batch, &b)) {
      return errors::InvalidArgument(
          "RfcnPsRoiPool: rois row ", row, " has batch_index ", r(row, 0),
          ", outside [0, ", batch, ") for features with batch size ", batch);
    }
  }
  return absl::OkStatus();
}

}  // namespace

template <typename Device, typename T>
class RfcnPsRoiPoolOp : public OpKernel {
 public:
  explicit RfcnPsRoiPoolOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadAttrs(ctx, &attrs_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& features = ctx->input(0);
    const Tensor& rois = ctx->input(1);
    Geometry g;
    OP_REQUIRES_OK(ctx, CheckInputs(features, rois, attrs_, &g));
    if (std::is_same<Device, CPUDevice>::value) {
      OP_REQUIRES_OK(ctx, CheckBatchIndices(rois, g.batch));
    }
    const int64_t num_rois = rois.dim_size(0);
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({num_rois, g.k, g.k, g.c_out}),
                            &output));
    if (output->NumElements() == 0) return;
    functor::RfcnPsRoiPoolForward<Device, T>()(
        ctx, g, num_rois, features.flat<T>().data(), rois.flat<float>().data(),
        output->flat<T>().data());
  }

 private:
  PsRoiPoolAttrs attrs_;
};

template <typename Device, typename T>
class RfcnPsRoiPoolGradOp : public OpKernel {
 public:
  explicit RfcnPsRoiPoolGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadAttrs(ctx, &attrs_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& features = ctx->input(0);
    const Tensor& rois = ctx->input(1);
    const Tensor& grad = ctx->input(2);
    Geometry g;
    OP_REQUIRES_OK(ctx, CheckInputs(features, rois, attrs_, &g));
    const int64_t num_rois = rois.dim_size(0);
    const TensorShape expected({num_rois, g.k, g.k, g.c_out});
    OP_REQUIRES(ctx, grad.shape() == expected,
                errors::InvalidArgument(
                    "RfcnPsRoiPoolGrad: grad must be [R, k, k, C] = ",
                    expected.DebugString(), ", got shape ",
                    grad.shape().DebugString()));
    if (std::is_same<Device, CPUDevice>::value) {
      OP_REQUIRES_OK(ctx, CheckBatchIndices(rois, g.batch));
    }
    Tensor* grad_features = nullptr;
    OP_REQUIRES_OK(ctx,
                   ctx->allocate_output(0, features.shape(), &grad_features));
    if (grad_features->NumElements() == 0) return;
    // Called for R = 0 too: the functor writes the zeros.
    functor::RfcnPsRoiPoolBackward<Device, T>()(
        ctx, g, num_rois, grad.flat<T>().data(), rois.flat<float>().data(),
        grad_features->flat<T>().data());
  }

 private:
  PsRoiPoolAttrs attrs_;
};

#define RFCN_REGISTER_CPU(T)                                         \
  REGISTER_KERNEL_BUILDER(                                           \
      Name("RfcnPsRoiPool").Device(DEVICE_CPU).TypeConstraint<T>("T"), \
      RfcnPsRoiPoolOp<CPUDevice, T>);                                \
  REGISTER_KERNEL_BUILDER(Name("RfcnPsRoiPoolGrad")                  \
                              .Device(DEVICE_CPU)                    \
                              .TypeConstraint<T>("T"),               \
                          RfcnPsRoiPoolGradOp<CPUDevice, T>);

RFCN_REGISTER_CPU(float);
RFCN_REGISTER_CPU(Eigen::half);
RFCN_REGISTER_CPU(bfloat16);
#undef RFCN_REGISTER_CPU

#if GOOGLE_CUDA
namespace functor {
#define RFCN_DECLARE_GPU(T)                                      \
  extern template struct RfcnPsRoiPoolForward<GPUDevice, T>;     \
  extern template struct RfcnPsRoiPoolBackward<GPUDevice, T>;
RFCN_DECLARE_GPU(float);
RFCN_DECLARE_GPU(Eigen::half);
RFCN_DECLARE_GPU(bfloat16);
#undef RFCN_DECLARE_GPU
}  // namespace functor

#define RFCN_REGISTER_GPU(T)                                         \
  REGISTER_KERNEL_BUILDER(                                           \
      Name("RfcnPsRoiPool").Device(DEVICE_GPU).TypeConstraint<T>("T"), \
      RfcnPsRoiPoolOp<GPUDevice, T>);                                \
  REGISTER_KERNEL_BUILDER(Name("RfcnPsRoiPoolGrad")                  \
                              .Device(DEVICE_GPU)                    \
                              .TypeConstraint<T>("T"),               \
                          RfcnPsRoiPoolGradOp<GPUDevice, T>);
RFCN_REGISTER_GPU(float);
RFCN_REGISTER_GPU(Eigen::half);
RFCN_REGISTER_GPU(bfloat16);
#undef RFCN_REGISTER_GPU
#endif  // GOOGLE_CUDA

}  // namespace tensorflow
