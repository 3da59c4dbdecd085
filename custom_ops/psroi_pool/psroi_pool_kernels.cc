// CPU kernels of RfcnPsRoiPool / RfcnPsRoiPoolGrad, and the op kernel
// classes shared with the GPU (registered for DEVICE_GPU under GOOGLE_CUDA).
//
// Shape shorthand: B images, H x W cells, kh x kw bins, C output channels,
// K = kh*kw*C channels, R RoIs (see psroi_pool_math.h).
//
// CPU strategy. The C values of one bin are contiguous in NHWC (bin-major
// layout), so every inner loop runs over a bin's C-channel slice with the
// per-bin arithmetic (bin bounds, bilinear taps, 1/area) hoisted out; those
// channel loops are vectorized (AVX2 + FMA where the CPU has it, chosen at
// run time). Bilinear bins use the separable form of the interpolation (see
// AxisWeights): each distinct cell is read (written) once per bin, with the
// summed weight of the sample points that touch it.
// The per-RoI geometry (avg cell ranges, bilinear separable weights, the
// adaptive sample counts) is tabulated once per call (BinTable), kh + kw
// entries per RoI, not 2 per bin.
//  * forward: one work unit per feature row (image b, row h): the bins whose
//    taps start on that row, so a thread reads a few consecutive map rows at a
//    time (cache and TLB locality); every bin is pooled once into its own
//    output slot, so any split across threads gives the same bits.
//  * backward: one work unit per feature row (image b, row h), which owns
//    that row of grad_features: no races, no atomics. Its contributions come
//    from per-call lists of the (RoI, bin row) pairs that read row h, in
//    ascending RoI order, so every cell sums its contributions in one fixed
//    order whatever the thread count: the result is deterministic (see
//    RowEntry).
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

#include "../common/cpu_kernel_util.h"
#include "../common/cpu_simd_util.h"
#include "psroi_pool_functor.h"
#include "psroi_pool_math.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/platform/threadpool.h"
#include "unsupported/Eigen/CXX11/Tensor"

// The CPU unit loops are also built for AVX2 + FMA and picked at run time
// (../common/cpu_simd_util.h), so the .so keeps running on any x86-64 while
// using 8-wide channel loops where the CPU has them.
#define RFCN_PSROI_HAVE_AVX2_DISPATCH RFCN_SIMD_HAVE_AVX2_DISPATCH
#define RFCN_PSROI_TARGET_AVX2 RFCN_SIMD_TARGET_AVX2
#define RFCN_PSROI_ALWAYS_INLINE RFCN_SIMD_ALWAYS_INLINE

namespace tensorflow {

typedef Eigen::ThreadPoolDevice CPUDevice;
#if GOOGLE_CUDA
typedef Eigen::GpuDevice GPUDevice;
#endif

using rfcn_psroi::Geometry;
using rfcn_psroi::Tap;

namespace {

using rfcn_common::CpuWorkers;

// A rough count of the cells one avg bin covers, for the cost model: RoIs
// are assumed to span about half the map on each side.
int64_t EstimatedBinCells(const Geometry& g) {
  const int64_t h = std::max<int64_t>(1, g.height / (2 * g.kh) + 1);
  const int64_t w = std::max<int64_t>(1, g.width / (2 * g.kw) + 1);
  return h * w;
}

// The distinct cells that the n sample points of one bilinear bin read along
// one axis, with their weights summed over the points (points outside the
// map add none). The bilinear rule is separable (a point is valid iff its row
// and its column are, and its four weights are products wy * wx), so a bin is
//   sum_h sum_w Wy[h] * Wx[w] * features[h, w]
// with Wy, Wx from this function: each distinct cell is read once instead of
// 4 reads per sample point. The points of a bin are monotone along the axis
// (so are their clamped taps), so a repeated cell is always one of the last
// two entries. Returns the count (<= min(2n, axis size)).
int AxisWeights(const Tap* taps, int n, int* cells, double* weights) {
  int m = 0;
  auto add = [&](int cell, double weight) {
    for (int q = m - 1; q >= 0 && q >= m - 2; --q) {
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

// Bilinear geometry of every RoI along one axis: per RoI its sample count n
// (sampling_ratio, or adaptive per RoI) and, per bin, the distinct cells and
// summed weights (AxisWeights). RoI r's k bins take `stride[r]` =
// min(2n, axis size) slots each, from `offset[r]` on (variable-length rows:
// an adaptive grid needs as many slots as its largest RoI only there).
struct AxisTable {
  std::vector<int> samples;     // [R] n
  std::vector<int> stride;      // [R] slots per bin
  std::vector<int64_t> offset;  // [R] first slot of bin 0
  std::vector<int> count;       // [R * k] distinct cells of each bin
  std::vector<int> cell;        // [slots]
  std::vector<double> weight;   // [slots]
};

// Bin geometry of all RoIs, tabulated once per call (2 axes x k entries per
// RoI instead of per bin), so that the per-bin work is table lookups.
//   avg:      the cell range [lo, hi) of bin index i along y and along x;
//   bilinear: AxisTable per axis.
// Arithmetic: psroi_pool_math.h (the functions the GPU kernels use too).
class BinTable {
 public:
  static constexpr int64_t kSequentialRois = 4096;

  BinTable(const Geometry& g, int64_t num_rois, const float* rois,
           thread::ThreadPool* workers)
      : g_(g), rois_(rois) {
    if (g.mode == rfcn_psroi::kAvg) {
      y_range_.resize(num_rois * g.kh * 2);
      x_range_.resize(num_rois * g.kw * 2);
    } else {
      Layout(num_rois, g.kh, g.height, 1, &y_);
      Layout(num_rois, g.kw, g.width, 2, &x_);
    }
    // A few hundred cycles per RoI: up to kSequentialRois RoIs are filled on
    // the calling thread (a parallel phase costs more in wake-ups, and on a
    // loaded machine in waiting for a descheduled worker, than it saves).
    auto fill = [&](int64_t begin, int64_t end) {
      std::vector<Tap> taps;
      for (int64_t r = begin; r < end; ++r) Fill(r, &taps);
    };
    if (num_rois <= kSequentialRois) {
      fill(0, num_rois);
      return;
    }
    const int64_t cost =
        40 * (g.kh + g.kw) *
        (g.mode == rfcn_psroi::kAvg ? 1 : 1 + std::max(g.sampling_ratio, 2));
    workers->ParallelFor(
        num_rois, thread::ThreadPool::SchedulingParams::Adaptive(cost), fill);
  }

  // avg: the cells [*h0, *h1) x [*w0, *w1) of bin (i, j) of RoI r.
  void AvgCells(int64_t r, int i, int j, int* h0, int* h1, int* w0,
                int* w1) const {
    const int* yr = &y_range_[(r * g_.kh + i) * 2];
    const int* xr = &x_range_[(r * g_.kw + j) * 2];
    *h0 = yr[0];
    *h1 = yr[1];
    *w0 = xr[0];
    *w1 = xr[1];
  }

  // bilinear: the separable cells and weights of bin index i (j) of RoI r,
  // and the bin's point count ny * nx.
  int YCount(int64_t r, int i) const { return y_.count[r * g_.kh + i]; }
  int XCount(int64_t r, int j) const { return x_.count[r * g_.kw + j]; }
  const int* YCells(int64_t r, int i) const {
    return &y_.cell[y_.offset[r] + static_cast<int64_t>(i) * y_.stride[r]];
  }
  const int* XCells(int64_t r, int j) const {
    return &x_.cell[x_.offset[r] + static_cast<int64_t>(j) * x_.stride[r]];
  }
  const double* YWeights(int64_t r, int i) const {
    return &y_.weight[y_.offset[r] + static_cast<int64_t>(i) * y_.stride[r]];
  }
  const double* XWeights(int64_t r, int j) const {
    return &x_.weight[x_.offset[r] + static_cast<int64_t>(j) * x_.stride[r]];
  }
  float Points(int64_t r) const {
    return rfcn_psroi::sample_count(y_.samples[r], x_.samples[r]);
  }

 private:
  // Sample counts, strides and offsets of one axis (coordinates `c` and
  // `c + 2` of each RoI row).
  void Layout(int64_t num_rois, int k, int size, int c, AxisTable* t) const {
    t->samples.resize(num_rois);
    t->stride.resize(num_rois);
    t->offset.resize(num_rois);
    t->count.resize(num_rois * k);
    int64_t total = 0;
    for (int64_t r = 0; r < num_rois; ++r) {
      double start, bin_size;
      rfcn_psroi::bilinear_roi_axis(rois_[r * 5 + c], rois_[r * 5 + c + 2],
                                    g_.spatial_scale, k, &start, &bin_size);
      const int n = rfcn_psroi::axis_samples(g_.sampling_ratio, bin_size);
      t->samples[r] = n;
      t->stride[r] = std::min(2 * n, size);
      t->offset[r] = total;
      total += static_cast<int64_t>(k) * t->stride[r];
    }
    t->cell.resize(total);
    t->weight.resize(total);
  }

  void FillAxis(int64_t r, int k, int size, int c, AxisTable* t,
                std::vector<Tap>* taps) {
    double start, bin_size;
    rfcn_psroi::bilinear_roi_axis(rois_[r * 5 + c], rois_[r * 5 + c + 2],
                                  g_.spatial_scale, k, &start, &bin_size);
    const int n = t->samples[r];
    taps->resize(n);
    for (int i = 0; i < k; ++i) {
      for (int p = 0; p < n; ++p) {
        (*taps)[p] = rfcn_psroi::bilinear_tap(
            rfcn_psroi::bilinear_sample_coord(start, bin_size, i, p, n), size);
      }
      const int64_t at = t->offset[r] + static_cast<int64_t>(i) * t->stride[r];
      t->count[r * k + i] =
          AxisWeights(taps->data(), n, &t->cell[at], &t->weight[at]);
    }
  }

  void Fill(int64_t r, std::vector<Tap>* taps) {
    const float* roi = rois_ + r * 5;
    if (g_.mode == rfcn_psroi::kAvg) {
      double ys, yl, xs, xl;
      const bool fy =
          rfcn_psroi::avg_roi_axis(roi[1], roi[3], g_.spatial_scale, &ys, &yl);
      const bool fx =
          rfcn_psroi::avg_roi_axis(roi[2], roi[4], g_.spatial_scale, &xs, &xl);
      int* yr = &y_range_[r * g_.kh * 2];
      int* xr = &x_range_[r * g_.kw * 2];
      for (int i = 0; i < g_.kh; ++i) {
        if (fy && fx) {
          rfcn_psroi::avg_bin_range(ys, yl, i, g_.kh, g_.height, &yr[2 * i],
                                    &yr[2 * i + 1]);
        } else {  // a non-finite corner: every bin empty
          yr[2 * i] = yr[2 * i + 1] = 0;
        }
      }
      for (int j = 0; j < g_.kw; ++j) {
        if (fy && fx) {
          rfcn_psroi::avg_bin_range(xs, xl, j, g_.kw, g_.width, &xr[2 * j],
                                    &xr[2 * j + 1]);
        } else {
          xr[2 * j] = xr[2 * j + 1] = 0;
        }
      }
      return;
    }
    FillAxis(r, g_.kh, g_.height, 1, &y_, taps);
    FillAxis(r, g_.kw, g_.width, 2, &x_, taps);
  }

  const Geometry g_;
  const float* rois_;
  std::vector<int> y_range_, x_range_;
  AxisTable y_, x_;
};

// The channel loops, over the C contiguous values of one bin. Written as
// plain loops over restrict pointers so that the compiler vectorizes them;
// the unit loops built for AVX2+FMA (RFCN_PSROI_TARGET_AVX2) inline them and
// get 8-wide code; float32 with C <= 32 has register-blocked intrinsics.
template <typename T>
RFCN_PSROI_ALWAYS_INLINE void AccumulateScaled(float* __restrict__ acc,
                                               const T* __restrict__ v,
                                               float w, int n) {
  for (int c = 0; c < n; ++c) acc[c] += w * static_cast<float>(v[c]);
}

template <typename T>
RFCN_PSROI_ALWAYS_INLINE void Accumulate(float* __restrict__ acc,
                                         const T* __restrict__ v, int n) {
  for (int c = 0; c < n; ++c) acc[c] += static_cast<float>(v[c]);
}

struct RowEntry {
  int64_t r;  // RoI row
  int i;      // bin row
  float wy;   // bilinear: summed y weight of row h in bin row i; avg: 1
};

struct RowLists {
  std::vector<int64_t> start;  // [B*H + 1]: entries of row (b, h)
  std::vector<RowEntry> entries;
};

// Forward work lists: every (RoI, bin row) once, under the feature row (b, h)
// where its taps start (bilinear: the bin row's first tapped row; avg: its
// first row; row 0 of image 0 for a bin row that reads nothing or a RoI with
// an invalid batch index, which pool 0), each list in ascending (r, i) order.
void BuildForwardLists(const Geometry& g, int64_t num_rois, const float* rois,
                       const BinTable& table, RowLists* lists) {
  const int64_t rows = static_cast<int64_t>(g.batch) * g.height;
  lists->start.assign(rows + 1, 0);
  std::vector<int64_t> key(num_rois * g.kh, 0);
  for (int64_t r = 0; r < num_rois; ++r) {
    int b;
    if (!rfcn_psroi::roi_batch_index(rois[r * 5], g.batch, &b)) continue;
    for (int i = 0; i < g.kh; ++i) {
      int h = 0;
      if (g.mode == rfcn_psroi::kAvg) {
        int h0, h1, w0, w1;
        table.AvgCells(r, i, 0, &h0, &h1, &w0, &w1);
        if (h1 > h0) h = h0;
      } else if (table.YCount(r, i) > 0) {
        h = *std::min_element(table.YCells(r, i),
                              table.YCells(r, i) + table.YCount(r, i));
      }
      key[r * g.kh + i] = static_cast<int64_t>(b) * g.height + h;
    }
  }
  for (int64_t q : key) ++lists->start[q + 1];
  for (int64_t q = 0; q < rows; ++q) lists->start[q + 1] += lists->start[q];
  lists->entries.resize(lists->start[rows]);
  std::vector<int64_t> fill(lists->start.begin(), lists->start.end() - 1);
  for (int64_t r = 0; r < num_rois; ++r) {
    for (int i = 0; i < g.kh; ++i) {
      lists->entries[fill[key[r * g.kh + i]]++] = RowEntry{r, i, 1.f};
    }
  }
}

// Forward of the output bins of units [begin, end). A unit is a feature row
// (b, h): it pools every bin whose taps start on that row (BuildForwardLists),
// so a thread's reads stay within a few consecutive rows of the map (cache
// and TLB friendly: one map cell holds all k*k channel groups, 4 KB apart
// from the next cell, so a walk over one group's slice touches a new page per
// cell). Each bin is pooled once, into its own output slot, so any split
// across threads gives the same bits.
template <typename T>
RFCN_PSROI_ALWAYS_INLINE void ForwardUnits(const Geometry& g,
                                           const RowLists& lists,
                                           const T* features,
                                           const float* rois,
                                           const BinTable& table, T* output,
                                           int64_t begin, int64_t end) {
  const int C = g.c_out;
  const int64_t bins = static_cast<int64_t>(g.kh) * g.kw;
  std::vector<float> acc_buffer(C);
  float* __restrict__ acc = acc_buffer.data();
  for (int64_t u = begin; u < end; ++u) {
    // The kw bins of each listed (RoI, bin row), flattened into one loop.
    for (int64_t q = lists.start[u] * g.kw; q < lists.start[u + 1] * g.kw;
         ++q) {
      const RowEntry& entry = lists.entries[q / g.kw];
      const int64_t r = entry.r;
      const int i = entry.i;
      const int j = static_cast<int>(q - (q / g.kw) * g.kw);
      const int bin = i * g.kw + j;
      T* __restrict__ out = output + (r * bins + bin) * C;
      int b;
      if (!rfcn_psroi::roi_batch_index(rois[r * 5], g.batch, &b)) {
        std::fill(out, out + C, T(0.f));
        continue;
      }
      std::fill(acc, acc + C, 0.f);
      // Channel block (i*kw + j) of image b, cell (0, 0).
      const T* block = features + rfcn_psroi::cell_offset(g, b, 0, 0) +
                       static_cast<int64_t>(bin) * C;
      float denom;
      if (g.mode == rfcn_psroi::kAvg) {
        int h0, h1, w0, w1;
        table.AvgCells(r, i, j, &h0, &h1, &w0, &w1);
        if (h1 <= h0 || w1 <= w0) {  // empty bin: 0
          std::fill(out, out + C, T(0.f));
          continue;
        }
        for (int h = h0; h < h1; ++h) {
          const T* p =
              block + (static_cast<int64_t>(h) * g.width + w0) * g.channels;
          for (int w = w0; w < w1; ++w, p += g.channels) Accumulate(acc, p, C);
        }
        denom = rfcn_psroi::bin_area(h0, h1, w0, w1);
      } else {
        const int ny = table.YCount(r, i), nx = table.XCount(r, j);
        const int* ycells = table.YCells(r, i);
        const int* xcells = table.XCells(r, j);
        const double* yw = table.YWeights(r, i);
        const double* xw = table.XWeights(r, j);
        for (int q = 0; q < ny; ++q) {
          const T* row =
              block + static_cast<int64_t>(ycells[q]) * g.width * g.channels;
          for (int t = 0; t < nx; ++t) {
            AccumulateScaled(acc,
                             row + static_cast<int64_t>(xcells[t]) * g.channels,
                             static_cast<float>(yw[q] * xw[t]), C);
          }
        }
        denom = table.Points(r);
      }
      // One reciprocal per bin, no division per element (<= 1 ulp from
      // acc / denom).
      const float inv = 1.f / denom;
      for (int c = 0; c < C; ++c) out[c] = static_cast<T>(acc[c] * inv);
    }
  }
}

// Backward. Units are rows (image b, feature row h): a unit owns row h of
// image b of grad_features (W*K contiguous values) and nothing else, so units
// never write the same cell: no races, no atomics. Its contributions come
// from a per-call list of (RoI r, bin row i, y weight) entries for every bin
// row that reads feature row h (bilinear: the bin's distinct tapped rows;
// avg: every row of the bin), built once in ascending RoI order. A unit zeroes
// its row and adds its entries in list order, bin columns j ascending, so each
// cell sums its contributions in one fixed order whatever the thread count:
// the result is deterministic. Writes stay inside one contiguous row (cache
// and TLB friendly), unlike a walk over one bin's channel slice of the map.
// Entries for every (RoI, bin row, feature row) of the call, grouped by
// (b, h), each group in ascending (r, i) order (a counting sort).
void BuildRowLists(const Geometry& g, int64_t num_rois, const float* rois,
                   const BinTable& table, RowLists* lists) {
  const int64_t rows = static_cast<int64_t>(g.batch) * g.height;
  lists->start.assign(rows + 1, 0);
  auto visit = [&](auto&& emit) {
    for (int64_t r = 0; r < num_rois; ++r) {
      int b;
      if (!rfcn_psroi::roi_batch_index(rois[r * 5], g.batch, &b)) continue;
      const int64_t base = static_cast<int64_t>(b) * g.height;
      for (int i = 0; i < g.kh; ++i) {
        if (g.mode == rfcn_psroi::kAvg) {
          int h0, h1, w0, w1;
          table.AvgCells(r, i, 0, &h0, &h1, &w0, &w1);
          for (int h = h0; h < h1; ++h) emit(base + h, RowEntry{r, i, 1.f});
        } else {
          const int ny = table.YCount(r, i);
          const int* cells = table.YCells(r, i);
          const double* weights = table.YWeights(r, i);
          for (int q = 0; q < ny; ++q) {
            emit(base + cells[q],
                 RowEntry{r, i, static_cast<float>(weights[q])});
          }
        }
      }
    }
  };
  visit([&](int64_t row, const RowEntry&) { ++lists->start[row + 1]; });
  for (int64_t q = 0; q < rows; ++q) lists->start[q + 1] += lists->start[q];
  lists->entries.resize(lists->start[rows]);
  std::vector<int64_t> fill(lists->start.begin(), lists->start.end() - 1);
  visit([&](int64_t row, const RowEntry& e) {
    lists->entries[fill[row]++] = e;
  });
}

// dst[c] += w * src[c] over one bin's C channels.
template <typename T>
struct AxpyPlain {
  int C;
  RFCN_PSROI_ALWAYS_INLINE void operator()(float* __restrict__ dst,
                                           const T* __restrict__ src, float w,
                                           const float* /*row_end*/) const {
    for (int c = 0; c < C; ++c) dst[c] += w * static_cast<float>(src[c]);
  }
};

// Rows [begin, end) of the backward (see RowEntry). `axpy` adds a scaled
// gradient bin into a bin's channels of the row.
template <typename T, typename Axpy>
RFCN_PSROI_ALWAYS_INLINE void BackwardRows(const Geometry& g, const T* grad,
                                           const BinTable& table,
                                           const RowLists& lists,
                                           T* grad_features, int64_t begin,
                                           int64_t end, const Axpy& axpy) {
  constexpr bool kFloat = std::is_same<T, float>::value;
  const int C = g.c_out;
  const int64_t bins = static_cast<int64_t>(g.kh) * g.kw;
  const int64_t row_size = static_cast<int64_t>(g.width) * g.channels;
  // float accumulation row for half / bfloat16 outputs.
  std::vector<float> scratch(kFloat ? 0 : row_size);
  for (int64_t u = begin; u < end; ++u) {
    const int b = static_cast<int>(u / g.height);
    const int h = static_cast<int>(u - static_cast<int64_t>(b) * g.height);
    T* out = grad_features + rfcn_psroi::cell_offset(g, b, h, 0);
    float* row;
    if constexpr (kFloat) {
      row = reinterpret_cast<float*>(out);
    } else {
      row = scratch.data();
    }
    std::memset(row, 0, sizeof(float) * row_size);
    const float* row_end = row + row_size;  // the unit owns [row, row_end)
    for (int64_t e = lists.start[u]; e < lists.start[u + 1]; ++e) {
      const RowEntry& entry = lists.entries[e];
      const int64_t r = entry.r;
      const int i = entry.i;
      for (int j = 0; j < g.kw; ++j) {
        const int bin = i * g.kw + j;
        const T* gr = grad + (r * bins + bin) * C;
        float* d = row + static_cast<int64_t>(bin) * C;
        if (g.mode == rfcn_psroi::kAvg) {
          int h0, h1, w0, w1;
          table.AvgCells(r, i, j, &h0, &h1, &w0, &w1);
          if (w1 <= w0) continue;
          const float s = 1.f / rfcn_psroi::bin_area(h0, h1, w0, w1);
          for (int w = w0; w < w1; ++w) {
            axpy(d + static_cast<int64_t>(w) * g.channels, gr, s, row_end);
          }
        } else {
          const int nx = table.XCount(r, j);
          const int* xcells = table.XCells(r, j);
          const double* xw = table.XWeights(r, j);
          const double s = static_cast<double>(entry.wy) / table.Points(r);
          for (int t = 0; t < nx; ++t) {
            axpy(d + static_cast<int64_t>(xcells[t]) * g.channels, gr,
                 static_cast<float>(s * xw[t]), row_end);
          }
        }
      }
    }
    if constexpr (!kFloat) {
      for (int64_t q = 0; q < row_size; ++q) out[q] = static_cast<T>(row[q]);
    }
  }
}

// The unit loops twice: built for the baseline ISA of the compile flags, and
// for AVX2 + FMA (8-wide channel loops), chosen once at run time by CPUID.
// The AVX2 build fuses multiply-adds, so its results differ from the baseline
// build's by float rounding (never between runs on one machine).
template <typename T>
void ForwardUnitsBase(const Geometry& g, const RowLists& lists,
                      const T* features, const float* rois,
                      const BinTable& table, T* output, int64_t begin,
                      int64_t end) {
  ForwardUnits(g, lists, features, rois, table, output, begin, end);
}

template <typename T>
void BackwardRowsBase(const Geometry& g, const T* grad, const BinTable& table,
                      const RowLists& lists, T* grad_features, int64_t begin,
                      int64_t end) {
  BackwardRows(g, grad, table, lists, grad_features, begin, end,
               AxpyPlain<T>{g.c_out});
}

#if RFCN_PSROI_HAVE_AVX2_DISPATCH
template <typename T>
RFCN_PSROI_TARGET_AVX2 void ForwardUnitsAvx2(const Geometry& g,
                                             const RowLists& lists,
                                             const T* features,
                                             const float* rois,
                                             const BinTable& table, T* output,
                                             int64_t begin, int64_t end) {
  ForwardUnits(g, lists, features, rois, table, output, begin, end);
}

template <typename T>
RFCN_PSROI_TARGET_AVX2 void BackwardRowsAvx2(const Geometry& g, const T* grad,
                                             const BinTable& table,
                                             const RowLists& lists,
                                             T* grad_features, int64_t begin,
                                             int64_t end) {
  BackwardRows(g, grad, table, lists, grad_features, begin, end,
               AxpyPlain<T>{g.c_out});
}

using rfcn_simd::CpuHasAvx2Fma;
#endif

#if RFCN_PSROI_HAVE_AVX2_DISPATCH
// float32 with AVX2 + FMA: a bin's C channels (C <= 32) are held in NV = ceil(C/8)
// registers across all of its cells; the last register is loaded / stored
// with a mask, so no lane reads or writes past the bin's channels.
using rfcn_simd::Lanes;
using rfcn_simd::LoadAdd;
using rfcn_simd::TailMask;

constexpr int64_t kPrefetchAhead = 1;

// Prefetches the cells of flattened forward bin q (see ForwardUnits): the
// first and last cache line of each tapped cell's C channels.
RFCN_PSROI_TARGET_AVX2 inline void PrefetchBilinearBin(
    const Geometry& g, const RowLists& lists, const float* features,
    const float* rois, const BinTable& table, int64_t q) {
  const RowEntry& entry = lists.entries[q / g.kw];
  const int j = static_cast<int>(q - (q / g.kw) * g.kw);
  int b;
  if (!rfcn_psroi::roi_batch_index(rois[entry.r * 5], g.batch, &b)) return;
  const char* block = reinterpret_cast<const char*>(
      features + rfcn_psroi::cell_offset(g, b, 0, 0) +
      static_cast<int64_t>(entry.i * g.kw + j) * g.c_out);
  const int64_t cell_bytes = static_cast<int64_t>(g.channels) * 4;
  const int64_t row_bytes = cell_bytes * g.width;
  const int ny = table.YCount(entry.r, entry.i);
  const int nx = table.XCount(entry.r, j);
  const int* ycells = table.YCells(entry.r, entry.i);
  const int* xcells = table.XCells(entry.r, j);
  const int last = g.c_out * 4 - 1;
  for (int a = 0; a < ny; ++a) {
    const char* row = block + ycells[a] * row_bytes;
    for (int t = 0; t < nx; ++t) {
      const char* p = row + xcells[t] * cell_bytes;
      _mm_prefetch(p, _MM_HINT_T0);
      _mm_prefetch(p + last, _MM_HINT_T0);
    }
  }
}

// Forward units [begin, end) (see ForwardUnits) for float, C <= 8 * NV.
template <int NV>
RFCN_PSROI_TARGET_AVX2 void ForwardUnitsAvx2Float(
    const Geometry& g, const RowLists& lists, const float* features,
    const float* rois, const BinTable& table, float* output, int64_t begin,
    int64_t end) {
  const int C = g.c_out;
  const int64_t bins = static_cast<int64_t>(g.kh) * g.kw;
  const int64_t row_stride = static_cast<int64_t>(g.width) * g.channels;
  const __m256i mask = TailMask(C);
  for (int64_t u = begin; u < end; ++u) {
    // The kw bins of each listed (RoI, bin row), flattened into one loop.
    for (int64_t q = lists.start[u] * g.kw; q < lists.start[u + 1] * g.kw;
         ++q) {
      const RowEntry& entry = lists.entries[q / g.kw];
      const int64_t r = entry.r;
      const int i = entry.i;
      const int j = static_cast<int>(q - (q / g.kw) * g.kw);
      const int bin = i * g.kw + j;
      float* out = output + (r * bins + bin) * C;
      // The reads are latency bound (each cell of a bin is 4 KB from the
      // next): fetch the cells of the bilinear bin kPrefetchAhead bins on
      // while this one is pooled.
      if (g.mode == rfcn_psroi::kBilinear &&
          q + kPrefetchAhead < lists.start[end] * g.kw) {
        PrefetchBilinearBin(g, lists, features, rois, table,
                            q + kPrefetchAhead);
      }
      Lanes<NV> acc;
      for (int k = 0; k < NV; ++k) acc.v[k] = _mm256_setzero_ps();
      float denom = 0.f;
      int b;
      if (rfcn_psroi::roi_batch_index(rois[r * 5], g.batch, &b)) {
        const float* block = features + rfcn_psroi::cell_offset(g, b, 0, 0) +
                             static_cast<int64_t>(bin) * C;
        if (g.mode == rfcn_psroi::kAvg) {
          int h0, h1, w0, w1;
          table.AvgCells(r, i, j, &h0, &h1, &w0, &w1);
          if (h1 > h0 && w1 > w0) {
            const __m256 one = _mm256_set1_ps(1.f);
            for (int h = h0; h < h1; ++h) {
              const float* p = block + h * row_stride +
                               static_cast<int64_t>(w0) * g.channels;
              for (int w = w0; w < w1; ++w, p += g.channels) {
                LoadAdd<NV>(&acc, p, one, mask);
              }
            }
            denom = rfcn_psroi::bin_area(h0, h1, w0, w1);
          }
        } else {
          const int ny = table.YCount(r, i), nx = table.XCount(r, j);
          const int* ycells = table.YCells(r, i);
          const int* xcells = table.XCells(r, j);
          const double* yw = table.YWeights(r, i);
          const double* xw = table.XWeights(r, j);
          for (int q = 0; q < ny; ++q) {
            const float* row = block + ycells[q] * row_stride;
            for (int t = 0; t < nx; ++t) {
              LoadAdd<NV>(&acc,
                          row + static_cast<int64_t>(xcells[t]) * g.channels,
                          _mm256_set1_ps(static_cast<float>(yw[q] * xw[t])),
                          mask);
            }
          }
          denom = table.Points(r);
        }
      }
      // 0 for an invalid batch index or an empty avg bin (acc is 0 there).
      const __m256 inv = _mm256_set1_ps(denom > 0.f ? 1.f / denom : 0.f);
      for (int k = 0; k < NV - 1; ++k) {
        _mm256_storeu_ps(out + 8 * k, _mm256_mul_ps(acc.v[k], inv));
      }
      // Bins j + 1 .. kw - 1 of this (RoI, bin row) are this unit's next
      // bins and their slots follow this one: where the last register ends
      // inside them it is stored full width (its lanes past C, zeros, are
      // overwritten by those bins), since a masked store is microcoded on
      // AMD Zen (~4x slower).
      if (out + 8 * NV <= output + (r * bins + (i + 1) * g.kw) * C) {
        _mm256_storeu_ps(out + 8 * (NV - 1), _mm256_mul_ps(acc.v[NV - 1], inv));
      } else {
        _mm256_maskstore_ps(out + 8 * (NV - 1), mask,
                            _mm256_mul_ps(acc.v[NV - 1], inv));
      }
    }
  }
}

// dst[c] += w * src[c] over C <= 8 * NV channels. The unit owns its whole
// row [.., row_end), so the last register is read and written full width
// (lanes past C stored back unchanged, rfcn_simd::AddScaledToOwned) except
// where it would pass row_end: a masked store is microcoded on AMD Zen
// (~4x slower), and this is the backward's innermost write.
template <int NV>
struct AxpyAvx2 {
  __m256i mask;
  // Not always_inline: GCC inlines it once BackwardRows sits in an AVX2
  // function (forcing it earlier fails the target check).
  RFCN_PSROI_TARGET_AVX2 inline void operator()(float* dst, const float* src,
                                                float w,
                                                const float* row_end) const {
    const __m256 wv = _mm256_set1_ps(w);
    Lanes<NV> s;
    rfcn_simd::Load<NV>(&s, src, mask);
    if (dst + 8 * NV <= row_end) {
      rfcn_simd::AddScaledToOwned<NV>(dst, s, wv, mask);
    } else {
      rfcn_simd::AddScaledTo<NV>(dst, s, wv, mask);
    }
  }
};

template <int NV>
RFCN_PSROI_TARGET_AVX2 void BackwardRowsAvx2Float(
    const Geometry& g, const float* grad, const BinTable& table,
    const RowLists& lists, float* grad_features, int64_t begin, int64_t end) {
  BackwardRows(g, grad, table, lists, grad_features, begin, end,
               AxpyAvx2<NV>{TailMask(g.c_out)});
}

using ForwardFloatFn = void (*)(const Geometry&, const RowLists&,
                                const float*, const float*, const BinTable&,
                                float*, int64_t, int64_t);
using BackwardFloatFn = void (*)(const Geometry&, const float*,
                                 const BinTable&, const RowLists&, float*,
                                 int64_t, int64_t);

// The register-blocked float kernels for C <= 32 channels, or null.
ForwardFloatFn PickForwardAvx2Float(int C) {
  switch ((C + 7) / 8) {
    case 1: return ForwardUnitsAvx2Float<1>;
    case 2: return ForwardUnitsAvx2Float<2>;
    case 3: return ForwardUnitsAvx2Float<3>;
    case 4: return ForwardUnitsAvx2Float<4>;
    default: return nullptr;
  }
}

BackwardFloatFn PickBackwardAvx2Float(int C) {
  switch ((C + 7) / 8) {
    case 1: return BackwardRowsAvx2Float<1>;
    case 2: return BackwardRowsAvx2Float<2>;
    case 3: return BackwardRowsAvx2Float<3>;
    case 4: return BackwardRowsAvx2Float<4>;
    default: return nullptr;
  }
}
#endif  // RFCN_PSROI_HAVE_AVX2_DISPATCH

}  // namespace

namespace functor {

template <typename T>
struct RfcnPsRoiPoolForward<CPUDevice, T> {
  void operator()(OpKernelContext* ctx, const Geometry& g, int64_t num_rois,
                  const T* features, const float* rois, T* output) {
    const int C = g.c_out;
    const int64_t bins = static_cast<int64_t>(g.kh) * g.kw;
    const int64_t rows = static_cast<int64_t>(g.batch) * g.height;
    if (num_rois * bins == 0 || C == 0 || rows == 0) return;
    thread::ThreadPool* workers = CpuWorkers(ctx);
    const BinTable table(g, num_rois, rois, workers);
    RowLists lists;
    BuildForwardLists(g, num_rois, rois, table, &lists);
    const int n = std::max(g.sampling_ratio, 2);
    const int64_t per_bin =
        g.mode == rfcn_psroi::kAvg
            ? 20 + EstimatedBinCells(g) * C * 2
            : 20 + static_cast<int64_t>(n + 1) * (n + 1) * (4 + 2 * C);
    const int64_t cost = (num_rois * g.kh / rows + 1) * g.kw * per_bin;
#if RFCN_PSROI_HAVE_AVX2_DISPATCH
    const bool avx2 = CpuHasAvx2Fma();
    ForwardFloatFn fast = nullptr;
    if constexpr (std::is_same<T, float>::value) {
      if (avx2) fast = PickForwardAvx2Float(C);
    }
#endif
    auto work = [&](int64_t begin, int64_t end) {
#if RFCN_PSROI_HAVE_AVX2_DISPATCH
      if constexpr (std::is_same<T, float>::value) {
        if (fast != nullptr) {
          fast(g, lists, features, rois, table, output, begin, end);
          return;
        }
      }
      if (avx2) {
        ForwardUnitsAvx2(g, lists, features, rois, table, output, begin, end);
        return;
      }
#endif
      ForwardUnitsBase(g, lists, features, rois, table, output, begin, end);
    };
    workers->ParallelFor(
        rows, thread::ThreadPool::SchedulingParams::Adaptive(cost), work);
  }
};

template <typename T>
struct RfcnPsRoiPoolBackward<CPUDevice, T> {
  void operator()(OpKernelContext* ctx, const Geometry& g, int64_t num_rois,
                  const T* grad, const float* rois, T* grad_features) {
    const int C = g.c_out;
    const int64_t rows = static_cast<int64_t>(g.batch) * g.height;
    if (rows == 0 || g.width == 0 || C == 0) return;
    thread::ThreadPool* workers = CpuWorkers(ctx);
    const BinTable table(g, num_rois, rois, workers);
    // Invalid batch indices (rejected by the op on CPU) get no entries,
    // matching the forward's zero output.
    RowLists lists;
    BuildRowLists(g, num_rois, rois, table, &lists);
    const int64_t per_entry =
        g.kw * (g.mode == rfcn_psroi::kAvg
                    ? 10 + (g.width / (2 * g.kw) + 1) * 2 * C
                    : 10 + 4 * (2 * C + 4));
    const int64_t entries_per_row =
        static_cast<int64_t>(lists.entries.size()) / rows + 1;
    const int64_t cost =
        entries_per_row * per_entry + static_cast<int64_t>(g.width) *
                                          g.channels;
#if RFCN_PSROI_HAVE_AVX2_DISPATCH
    const bool avx2 = CpuHasAvx2Fma();
    BackwardFloatFn fast = nullptr;
    if constexpr (std::is_same<T, float>::value) {
      if (avx2) fast = PickBackwardAvx2Float(C);
    }
#endif
    auto work = [&](int64_t begin, int64_t end) {
#if RFCN_PSROI_HAVE_AVX2_DISPATCH
      if constexpr (std::is_same<T, float>::value) {
        if (fast != nullptr) {
          fast(g, grad, table, lists, grad_features, begin, end);
          return;
        }
      }
      if (avx2) {
        BackwardRowsAvx2(g, grad, table, lists, grad_features, begin, end);
        return;
      }
#endif
      BackwardRowsBase(g, grad, table, lists, grad_features, begin, end);
    };
    workers->ParallelFor(
        rows, thread::ThreadPool::SchedulingParams::Adaptive(cost), work);
  }
};

}  // namespace functor

namespace {

struct PsRoiPoolAttrs {
  int pooled_height;
  int pooled_width;
  float spatial_scale;
  std::string mode;
  int sampling_ratio;
};

absl::Status ReadAttrs(OpKernelConstruction* ctx, PsRoiPoolAttrs* a) {
  TF_RETURN_IF_ERROR(ctx->GetAttr("pooled_height", &a->pooled_height));
  TF_RETURN_IF_ERROR(ctx->GetAttr("pooled_width", &a->pooled_width));
  TF_RETURN_IF_ERROR(ctx->GetAttr("spatial_scale", &a->spatial_scale));
  TF_RETURN_IF_ERROR(ctx->GetAttr("mode", &a->mode));
  TF_RETURN_IF_ERROR(ctx->GetAttr("sampling_ratio", &a->sampling_ratio));
  if (a->pooled_height < 1 || a->pooled_width < 1) {
    return errors::InvalidArgument(
        "RfcnPsRoiPool: pooled_height and pooled_width must be >= 1, got ",
        a->pooled_height, " x ", a->pooled_width);
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

// Checks features [B, H, W, kh*kw*C] and rois [R, 5]; fills the geometry.
absl::Status CheckInputs(const Tensor& features, const Tensor& rois,
                         const PsRoiPoolAttrs& a, Geometry* g) {
  if (features.dims() != 4) {
    return errors::InvalidArgument(
        "RfcnPsRoiPool: features must be rank 4 [B, H, W, kh*kw*C], got "
        "shape ",
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
  const int64_t kh = a.pooled_height, kw = a.pooled_width;
  const int64_t channels = features.dim_size(3);
  if (channels % (kh * kw) != 0) {
    return errors::InvalidArgument(
        "RfcnPsRoiPool: features channels (", channels,
        ") must be divisible by pooled_height*pooled_width = ", kh, "*", kw,
        " = ", kh * kw, " (the bin-major layout kh*kw*C)");
  }
  g->batch = static_cast<int>(features.dim_size(0));
  g->height = static_cast<int>(features.dim_size(1));
  g->width = static_cast<int>(features.dim_size(2));
  g->channels = static_cast<int>(channels);
  g->kh = a.pooled_height;
  g->kw = a.pooled_width;
  g->c_out = static_cast<int>(channels / (kh * kw));
  g->spatial_scale = a.spatial_scale;
  g->sampling_ratio = a.sampling_ratio;
  g->mode = a.mode == "avg" ? rfcn_psroi::kAvg : rfcn_psroi::kBilinear;
  return absl::OkStatus();
}

// Host-side check that every batch index lies in [0, B) (CPU kernels only:
// on GPU the rois live in device memory and an out-of-range row pools 0).
absl::Status CheckBatchIndices(const Tensor& rois, int batch) {
  return rfcn_common::CheckRoiBatchIndices(rois, batch, "RfcnPsRoiPool",
                                           rfcn_psroi::roi_batch_index);
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
                            0, TensorShape({num_rois, g.kh, g.kw, g.c_out}),
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
    const TensorShape expected({num_rois, g.kh, g.kw, g.c_out});
    OP_REQUIRES(ctx, grad.shape() == expected,
                errors::InvalidArgument(
                    "RfcnPsRoiPoolGrad: grad must be [R, kh, kw, C] = ",
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
