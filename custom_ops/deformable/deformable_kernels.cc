// CPU kernels of the deformable ops and the op kernel classes shared with
// the GPU (registered for DEVICE_GPU under GOOGLE_CUDA). Arithmetic and
// layouts: deformable_math.h.
//
// CPU strategy (threaded with the CPU worker pool's ParallelFor; every
// backward is race-free and deterministic: each output element is written
// by one work unit, which sums its contributions in a fixed order):
//  * pool forward: one unit per output bin (r, i, j); per offset group the
//    sample points are reduced to their distinct rows and columns with summed
//    weights (separable bilinear form, AxisCells), then the inner loops run
//    over the group's contiguous channel slice.
//  * pool backward, one fused pass: one unit per (image b, bin position
//    (i, j)): bin (i, j) of every RoI reads only channel block (i*k + j) of
//    its image, so units write disjoint cells of the feature gradient (the
//    plain PS-RoI op's partition) and disjoint offset gradients; a unit visits
//    the RoIs of image b in ascending row order.
//  * pool, float32 on an AVX2 + FMA CPU with C / G <= 32 (the R-FCN head)
//    and sampling_ratio <= 8: register-blocked kernels
//    (DeformPoolForwardAvx2, DeformPoolBackwardAvx2 and the in-place
//    DeformPoolBackwardSparseAvx2) with the same (image, bin position) units
//    for the forward too, the taps of every (RoI, bin, group) tabulated once
//    per call (TapTable), a bin-major padded output (gradient), and either
//    block-major padded copies of the map (many RoIs per image, RoIs
//    ascending) or in-place access with RoIs sorted by row (few RoIs); see
//    the comment above them. Sums in a fixed order (deterministic), with
//    fused multiply-adds and float tap weights: ~1e-7 relative from the
//    portable loops.
//  * im2col forward: one unit per output pixel; tap weights once per (pixel,
//    tap) with the mask folded in, then a loop over Cin channels.
//  * im2col backward, offsets and mask: one unit per output pixel
//    (conv_offset_grad of the math header, the GPU's code).
//  * im2col backward, input: one unit per (image b, channel chunk): a unit
//    owns its channel slice of the whole image, visits every (pixel, tap)
//    in order and scatters only into that slice.

#define EIGEN_USE_THREADS
#if GOOGLE_CUDA
#ifndef EIGEN_USE_GPU
#define EIGEN_USE_GPU
#endif
#endif

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include "../common/cpu_kernel_util.h"
#include "../common/cpu_simd_util.h"
#include "deformable_functor.h"
#include "deformable_math.h"
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

using rfcn_deform::ConvGeometry;
using rfcn_deform::Corners;
using rfcn_deform::PoolGeometry;
using rfcn_deform::Tap;

namespace {

using rfcn_common::CpuWorkers;

// RoI geometry of both axes.
struct RoiAxes {
  double ys, yext, ybin, xs, xext, xbin;
};

RoiAxes ReadRoi(const PoolGeometry& g, const float* roi) {
  RoiAxes a;
  rfcn_deform::pool_roi_axis(roi[1], roi[3], g.spatial_scale, g.k, &a.ys,
                             &a.yext, &a.ybin);
  rfcn_deform::pool_roi_axis(roi[2], roi[4], g.spatial_scale, g.k, &a.xs,
                             &a.xext, &a.xbin);
  return a;
}

// The distinct cells that the n sample points of a shifted bin starting at
// bin_start read along one axis (pool_sample / pool_tap of the math header),
// with the interpolation weights summed over the valid points (w) and their
// derivatives with respect to the bin's coordinate (dw: -gate for a low
// cell, +gate for a high one). Bilinear sampling is separable (a point is
// valid iff its row and its column are; its weights are wy * wx), so a bin
// is sum_q sum_t Wy[q] Wx[t] f(q, t) and its y derivative is
// sum_q sum_t DWy[q] Wx[t] f(q, t): each distinct cell is read (written)
// once per bin, not 4 times per sample point. Returns the count (<= 2n).
// Runs twice per (RoI, bin, group): inlined, taps kept in registers (perf:
// a tap array written and read back, and the call, cost more than the
// arithmetic).
RFCN_SIMD_ALWAYS_INLINE int AxisCells(double bin_start, double bin_size,
                                      int n, int size, int* cells, double* w,
                                      double* dw) {
  int m = 0;
  auto add = [&](int cell, double weight, double deriv) {
    for (int q = 0; q < m; ++q) {
      if (cells[q] == cell) {
        w[q] += weight;
        dw[q] += deriv;
        return;
      }
    }
    cells[m] = cell;
    w[m] = weight;
    dw[m] = deriv;
    ++m;
  };
  for (int p = 0; p < n; ++p) {
    const Tap t = rfcn_deform::pool_tap(
        rfcn_deform::pool_sample(bin_start, bin_size, p, n), size);
    if (!t.valid) continue;
    add(t.lo, t.wlo, -t.gate);
    add(t.hi, t.whi, t.gate);
  }
  return m;
}

// Separable cells of one (RoI, bin, offset group): scratch reused per call.
struct BinCells {
  explicit BinCells(int n)
      : ycell(2 * n), xcell(2 * n), yw(2 * n), xw(2 * n), ydw(2 * n),
        xdw(2 * n) {}

  template <typename T>
  void Fill(const PoolGeometry& g, const RoiAxes& a, const T* offsets,
            int64_t r, int i, int j, int grp) {
    const int n = g.sampling_ratio;
    const int64_t oi = rfcn_deform::pool_offset_index(g, r, i, j, grp, 0);
    ny = AxisCells(rfcn_deform::pool_bin_start(
                       a.ys, a.yext, a.ybin, i,
                       static_cast<double>(offsets[oi]), g.trans_std),
                   a.ybin, n, g.height, ycell.data(), yw.data(), ydw.data());
    nx = AxisCells(rfcn_deform::pool_bin_start(
                       a.xs, a.xext, a.xbin, j,
                       static_cast<double>(offsets[oi + 1]), g.trans_std),
                   a.xbin, n, g.width, xcell.data(), xw.data(), xdw.data());
  }

  int ny = 0, nx = 0;
  std::vector<int> ycell, xcell;
  std::vector<double> yw, xw, ydw, xdw;
};

// RoI rows of each image, ascending (CSR: rows order[start[b], start[b+1])
// belong to image b); rows with an invalid batch index are in no list.
struct ImageRois {
  std::vector<int64_t> start;  // [B + 1]
  std::vector<int64_t> order;  // [valid RoIs]
};

ImageRois GroupByImage(const PoolGeometry& g, int64_t num_rois,
                       const float* rois) {
  ImageRois ir;
  ir.start.assign(g.batch + 1, 0);
  std::vector<int> batch_of(num_rois, -1);
  for (int64_t r = 0; r < num_rois; ++r) {
    int b;
    if (rfcn_deform::roi_batch_index(rois[r * 5], g.batch, &b)) {
      batch_of[r] = b;
      ++ir.start[b + 1];
    }
  }
  for (int b = 0; b < g.batch; ++b) ir.start[b + 1] += ir.start[b];
  ir.order.resize(ir.start[g.batch]);
  std::vector<int64_t> fill(ir.start.begin(), ir.start.end() - 1);
  for (int64_t r = 0; r < num_rois; ++r) {
    if (batch_of[r] >= 0) ir.order[fill[batch_of[r]]++] = r;
  }
  return ir;
}

#if RFCN_SIMD_HAVE_AVX2_DISPATCH
// ------------------------------------------- float32 kernels, AVX2 + FMA
// Work units are (image b, bin position (i, j)): bin (i, j) of every RoI
// reads only channel block (i*k + j), a 1/(k*k) slice of the map. One map
// cell holds all k*k blocks (4 KB), so the next cell of a block is on the
// next page: visited in RoI order the slice's reads miss cache and TLB (perf:
// the loop stalls on the first load of each cell). With many RoIs per image
// a unit therefore first copies its block into a dense scratch padded to
// whole registers (GatherBlock; a few hundred KB, L2-resident) and visits
// its RoIs in ascending order, so its taps, its output (gradient) slices and
// its tap records are sequential streams. With few RoIs that copy costs
// more than it saves: the unit reads the map in place and visits its RoIs
// sorted by the first row of their shifted bin (SortByRow), so consecutive
// RoIs read neighbouring rows, whose lines and pages are still cached. Both
// orders are functions of the inputs only (a stable counting sort), so the
// backward's sums stay deterministic.
// The geometry of every (RoI, bin, group) is tabulated once per call in a
// separate threaded pass (TapTable): it reads the RoIs and offsets
// sequentially, and the unit loops are left with table reads and FMAs
// (perf: computed per item inside the unit loop, BinCells::Fill stalled on
// the offsets read in sorted order and cost a third of the op).
// A bin's channel slice of one offset group (cg = C / G <= 32 contiguous
// floats) is held in NV = ceil(cg / 8) registers across all of its cells
// (../common/cpu_simd_util.h).

using rfcn_simd::Lanes;
using rfcn_simd::TailMask;

// Largest sampling_ratio of the AVX2 path (the tap records have 2n slots
// per axis on the stack of the table pass); larger ones run the portable
// loops.
constexpr int kMaxTableSamples = 8;

// The distinct cells that the n sample points of a shifted bin read along
// one axis, like AxisCells, with summed weights w and derivatives dw (float;
// summed in double). Points step apart from bin_start + step / 2. For
// step >= 0 the taps are non-decreasing (pool_tap clamps monotonically) and
// every cell is at most one above the last one added, so the distinct
// cells come out ascending and a repeated cell is one of the last two:
// branch-free selects instead of a search (perf: the search's
// data-dependent branches mispredicted). A negative or NaN step (a RoI with
// y2 < y1) takes the general search. Returns the count (<= 2n).
// N = n is a template argument: fixed-size scratch zeroed by a few stores
// and unrolled loops (perf: a runtime-sized zeroing was a `rep stos`, a
// third of the table pass).
template <int N>
RFCN_SIMD_ALWAYS_INLINE int AxisTaps(double bin_start, double step, int size,
                                     int32_t* cells, float* w, float* dw) {
  constexpr int n = N;
  int c[2 * N + 2];
  double sw[2 * N + 2] = {};
  double sd[2 * N + 2] = {};
  c[0] = c[1] = INT_MIN;  // sentinels: never a cell
  int m = 2;
  const bool ascending = step >= 0.0;
  auto add = [&](int cell, double weight, double deriv) {
    int at = m;
    if (ascending) {
      at = c[m - 2] == cell ? m - 2 : at;
      at = c[m - 1] == cell ? m - 1 : at;
    } else {
      for (int q = 2; q < m; ++q) at = c[q] == cell ? q : at;
    }
    c[at] = cell;
    sw[at] += weight;
    sd[at] += deriv;
    m += at == m;
  };
  for (int p = 0; p < n; ++p) {
    const Tap t = rfcn_deform::pool_tap(
        bin_start + (static_cast<double>(p) + 0.5) * step, size);
    if (!t.valid) continue;
    add(t.lo, t.wlo, -t.gate);
    add(t.hi, t.whi, t.gate);
  }
  for (int q = 2; q < m; ++q) {
    cells[q - 2] = c[q];
    w[q - 2] = static_cast<float>(sw[q]);
    if (dw != nullptr) dw[q - 2] = static_cast<float>(sd[q]);
  }
  return m - 2;
}

// AxisTaps<2> (sampling_ratio 2, the default) in closed form for its
// common case (ascending, both points valid): the four taps lo0 <= (hi0,
// lo1 in either order) <= hi1 are put in sorted order, adjacent equal cells
// merged by position counting, and each slot's weight summed with selects:
// no loop, no indexed accumulation (perf: 43 -> 27 ns per record in a
// standalone timing). The rest goes to AxisTaps<2>. Same cells; weights
// summed in another order (double, then float).
RFCN_SIMD_ALWAYS_INLINE int AxisTapsPair(double bin_start, double step,
                                         int size, int32_t* cells, float* w,
                                         float* dw) {
  const Tap t0 = rfcn_deform::pool_tap(bin_start + 0.5 * step, size);
  const Tap t1 = rfcn_deform::pool_tap(bin_start + 1.5 * step, size);
  if (!(step >= 0.0 && t0.valid && t1.valid)) {
    return AxisTaps<2>(bin_start, step, size, cells, w, dw);
  }
  const bool swap = t0.hi > t1.lo;
  const int a0 = t0.lo, a1 = swap ? t1.lo : t0.hi;
  const int a2 = swap ? t0.hi : t1.lo, a3 = t1.hi;
  const double w0 = t0.wlo, w1 = swap ? t1.wlo : t0.whi;
  const double w2 = swap ? t0.whi : t1.wlo, w3 = t1.whi;
  const double d0 = -t0.gate, d1 = swap ? -t1.gate : t0.gate;
  const double d2 = swap ? t0.gate : -t1.gate, d3 = t1.gate;
  // Slot of each sorted tap: equal neighbours share one.
  const int p1 = a1 != a0, p2 = p1 + (a2 != a1), p3 = p2 + (a3 != a2);
  cells[0] = a0;
  cells[p1] = a1;
  cells[p2] = a2;
  cells[p3] = a3;
  auto slot = [&](int q, double v0, double v1, double v2, double v3) {
    return (q == 0 ? v0 : 0.0) + (p1 == q ? v1 : 0.0) + (p2 == q ? v2 : 0.0) +
           (p3 == q ? v3 : 0.0);
  };
  for (int q = 0; q < 4; ++q) {
    w[q] = static_cast<float>(slot(q, w0, w1, w2, w3));
    if (dw != nullptr) dw[q] = static_cast<float>(slot(q, d0, d1, d2, d3));
  }
  return p3 + 1;
}

// Per-axis taps for sampling_ratio N.
template <int N>
RFCN_SIMD_ALWAYS_INLINE int AxisTapsN(double bin_start, double step, int size,
                                      int32_t* cells, float* w, float* dw) {
  if constexpr (N == 2) {
    return AxisTapsPair(bin_start, step, size, cells, w, dw);
  } else {
    return AxisTaps<N>(bin_start, step, size, cells, w, dw);
  }
}

// Scratch memory of the AVX2 path, reused across calls. Its buffers are
// several MB (tap records, bin-major slices, block-major map copies): fresh
// from the allocator each call they are fresh pages, and the kernel's page
// faults (zeroing every page) cost more than the op's own work (perf:
// clear_page_erms was 23% of a forward + backward). A small process-wide
// free list keeps the last kKeep buffers for the next call. A buffer is
// always fully written before it is read, so reuse changes no result.
class ScratchPool {
 public:
  static ScratchPool& Get() {
    static ScratchPool* pool = new ScratchPool;  // never destroyed
    return *pool;
  }

  // A buffer of at least `bytes` (the smallest free one that fits, else a
  // new one); *capacity receives its size.
  void* Take(size_t bytes, size_t* capacity) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      int best = -1;
      for (int q = 0; q < static_cast<int>(free_.size()); ++q) {
        if (free_[q].bytes >= bytes &&
            (best < 0 || free_[q].bytes < free_[best].bytes)) {
          best = q;
        }
      }
      if (best >= 0) {
        void* p = free_[best].data;
        *capacity = free_[best].bytes;
        free_.erase(free_.begin() + best);
        return p;
      }
    }
    *capacity = bytes;
    void* p = std::malloc(std::max<size_t>(bytes, 1));
    if (p == nullptr) throw std::bad_alloc();
    return p;
  }

  // Returns a buffer; the smallest ones are freed beyond kKeep.
  void Give(void* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back({p, bytes});
    while (free_.size() > kKeep) {
      auto smallest = std::min_element(
          free_.begin(), free_.end(),
          [](const Block& a, const Block& b) { return a.bytes < b.bytes; });
      std::free(smallest->data);
      free_.erase(smallest);
    }
  }

 private:
  struct Block {
    void* data;
    size_t bytes;
  };
  static constexpr size_t kKeep = 8;
  std::mutex mu_;
  std::vector<Block> free_;
};

// n elements of T from the ScratchPool, returned to it on destruction.
// Uninitialized.
template <typename T>
class Scratch {
 public:
  Scratch() = default;
  explicit Scratch(int64_t n) { Reset(n); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { Release(); }

  void Reset(int64_t n) {
    Release();
    data_ = static_cast<T*>(ScratchPool::Get().Take(
        sizeof(T) * static_cast<size_t>(n), &bytes_));
  }
  T* get() const { return data_; }
  T& operator[](int64_t q) const { return data_[q]; }

 private:
  void Release() {
    if (data_ != nullptr) ScratchPool::Get().Give(data_, bytes_);
    data_ = nullptr;
  }
  T* data_ = nullptr;
  size_t bytes_ = 0;
};

// Tap records of every (bin position, RoI, offset group) of one call,
// bin-major ([k*k, R, G]) so a unit's records are contiguous. Record e:
//   cells[e * words]: ny, nx, ycell[n2], xcell[n2]   (n2 = 2 * sampling_ratio)
//   weights[e * floats]: yw[n2], xw[n2] (, ydw[n2], xdw[n2] with derivatives)
// and per RoI the offset-gradient scales trans_std * (y extent, x extent).
// Records of RoIs with an invalid batch index have no cells.
struct TapTable {
  int n2 = 0, words = 0, floats = 0;
  Scratch<int32_t> cells;
  Scratch<float> weights;
  Scratch<float> scale;  // [R, 2]

  const int32_t* Cells(int64_t e) const { return cells.get() + e * words; }
  const float* Weights(int64_t e) const { return weights.get() + e * floats; }

  // One record's view (the layout above): ny x nx taps at cells yc[q], xc[x]
  // with weights yw[q] * xw[x]; ydw / xdw are the weights' derivatives
  // (nullptr when the table was built without them).
  struct Record {
    int ny, nx;
    const int32_t* yc;
    const int32_t* xc;
    const float* yw;
    const float* xw;
    const float* ydw;
    const float* xdw;
  };
  Record At(int64_t e) const {
    const int32_t* rc = Cells(e);
    const float* rw = Weights(e);
    const bool d = floats == 4 * n2;
    return Record{rc[0],   rc[1],
                  rc + 2,  rc + 2 + n2,
                  rw,      rw + n2,
                  d ? rw + 2 * n2 : nullptr,
                  d ? rw + 3 * n2 : nullptr};
  }
};

// Records of RoIs [begin, end) of BuildTapTable, for sampling_ratio N.
template <int N>
void FillTapRecords(const PoolGeometry& g, int64_t num_rois, const float* rois,
                    const float* offsets, bool derivatives, TapTable* t,
                    int64_t begin, int64_t end) {
  const int n = N, k = g.k, G = g.groups;
        for (int64_t r = begin; r < end; ++r) {
          int b;
          const bool valid =
              rfcn_deform::roi_batch_index(rois[r * 5], g.batch, &b);
          const RoiAxes a = ReadRoi(g, rois + r * 5);
          t->scale[2 * r] = static_cast<float>(g.trans_std * a.yext);
          t->scale[2 * r + 1] = static_cast<float>(g.trans_std * a.xext);
          const double ystep = a.ybin / n, xstep = a.xbin / n;
          for (int i = 0; i < k; ++i) {
            for (int j = 0; j < k; ++j) {
              const int bin = i * k + j;
              for (int grp = 0; grp < G; ++grp) {
                const int64_t e = (bin * num_rois + r) * G + grp;
                int32_t* rc = t->cells.get() + e * t->words;
                float* rw = t->weights.get() + e * t->floats;
                if (!valid) {
                  rc[0] = rc[1] = 0;
                  continue;
                }
                const int64_t oi = rfcn_deform::pool_offset_index(g, r, i, j, grp, 0);
                const double y0 = rfcn_deform::pool_bin_start(
                    a.ys, a.yext, a.ybin, i, static_cast<double>(offsets[oi]),
                    g.trans_std);
                const double x0 = rfcn_deform::pool_bin_start(
                    a.xs, a.xext, a.xbin, j,
                    static_cast<double>(offsets[oi + 1]), g.trans_std);
                float* dw = derivatives ? rw + 2 * t->n2 : nullptr;
                rc[0] = AxisTapsN<N>(y0, ystep, g.height, rc + 2, rw, dw);
                rc[1] = AxisTapsN<N>(x0, xstep, g.width, rc + 2 + t->n2,
                                    rw + t->n2,
                                    derivatives ? dw + t->n2 : nullptr);
              }
            }
          }
        }
}

// Fills *t for the call, threaded over RoIs (each RoI's records written by
// one unit). sampling_ratio <= kMaxTableSamples.
void BuildTapTable(thread::ThreadPool* workers, const PoolGeometry& g,
                   int64_t num_rois, const float* rois, const float* offsets,
                   bool derivatives, TapTable* t) {
  const int n = g.sampling_ratio, G = g.groups;
  const int64_t bins = static_cast<int64_t>(g.k) * g.k;
  t->n2 = 2 * n;
  t->words = 2 + 2 * t->n2;
  t->floats = (derivatives ? 4 : 2) * t->n2;
  const int64_t records = bins * num_rois * G;
  t->cells.Reset(records * t->words);
  t->weights.Reset(records * t->floats);
  t->scale.Reset(2 * num_rois);
  using Fill = void (*)(const PoolGeometry&, int64_t, const float*,
                        const float*, bool, TapTable*, int64_t, int64_t);
  static constexpr Fill kFill[kMaxTableSamples] = {
      FillTapRecords<1>, FillTapRecords<2>, FillTapRecords<3>,
      FillTapRecords<4>, FillTapRecords<5>, FillTapRecords<6>,
      FillTapRecords<7>, FillTapRecords<8>};
  const Fill fill = kFill[n - 1];
  workers->ParallelFor(
      num_rois,
      thread::ThreadPool::SchedulingParams::Adaptive(bins * G * (40 + 20 * n)),
      [&](int64_t begin, int64_t end) {
        fill(g, num_rois, rois, offsets, derivatives, t, begin, end);
      });
}

// The RoIs `ids[0, n)` of one image sorted (stably) by the first row their
// bin `bin` (offset group 0) reads, into *sorted; *count is scratch. A bin
// that reads nothing sorts first.
void SortByRow(const PoolGeometry& g, const TapTable& t, int64_t num_rois,
               int bin, const int64_t* ids, int64_t n,
               std::vector<int64_t>* count, std::vector<int64_t>* sorted,
               std::vector<int>* key) {
  count->assign(g.height + 1, 0);
  key->resize(n);
  sorted->resize(n);
  for (int64_t o = 0; o < n; ++o) {
    const int32_t* rc = t.Cells((bin * num_rois + ids[o]) * g.groups);
    const int h = rc[0] > 0 ? rc[2] : 0;
    (*key)[o] = h;
    ++(*count)[h + 1];
  }
  for (int h = 0; h < g.height; ++h) (*count)[h + 1] += (*count)[h];
  for (int64_t o = 0; o < n; ++o) (*sorted)[(*count)[(*key)[o]]++] = ids[o];
}

// The output (gradient) slices and tap records of a sorted unit's items are
// read in sorted, not memory, order: prefetched this many items ahead.
constexpr int64_t kPrefetchAhead = 8;

// Prefetches the first and last byte of p[0, bytes) (<= 32 floats) into
// L1. Inline asm: GCC 12 dropped every __builtin_prefetch of this file
// (none reached the object code). PREFETCHT0 for writes too (PREFETCHW is
// not on every x86-64); `rw` is kept for the call sites' documentation.
inline void PrefetchSpan(const void* p, int64_t bytes, int /*rw*/) {
  const char* c = static_cast<const char*>(p);
  asm volatile("prefetcht0 (%0)" : : "r"(c));
  asm volatile("prefetcht0 (%0)" : : "r"(c + bytes - 1));
}

// Prefetch of the item `it + kPrefetchAhead` of a sorted unit (items
// it = o * G + grp of RoIs ids[o]): its tap record and its slice of `slab`
// (the unit's bin-major output or output gradient, [R, C]).
inline void PrefetchAhead(const PoolGeometry& g, const TapTable& t,
                          int64_t num_rois, int bin, const int64_t* ids,
                          int64_t it, int64_t last, const float* slab,
                          int rw, int cgp) {
  const int64_t ahead = it + kPrefetchAhead;
  if (ahead >= last) return;
  const int64_t o = ahead / g.groups;
  const int grp = static_cast<int>(ahead - o * g.groups);
  const int cg = g.c_out / g.groups;
  const int64_t e = (bin * num_rois + ids[o]) * g.groups + grp;
  PrefetchSpan(t.Cells(e), 4 * t.words, 0);
  PrefetchSpan(t.Weights(e), 4 * t.floats, 0);
  PrefetchSpan(slab + (ids[o] * g.groups + grp) * cgp, 4 * cg, rw);
}

// The cells that item `it + kCellPrefetchAhead` of a sorted unit reads in
// place (its record prefetched earlier by PrefetchAhead): first and last
// line of its slice of `a` (and `b` unless null) at every tapped cell. In
// place, the first touch of a cell misses cache (perf: the sparse loops
// stalled on those loads); the table gives the addresses items ahead.
constexpr int64_t kCellPrefetchAhead = 4;

inline void PrefetchItemCells(const PoolGeometry& g, const TapTable& t,
                              int64_t num_rois, int bin, const int64_t* ids,
                              int64_t it, int64_t last, const float* a,
                              const float* b) {
  const int64_t ahead = it + kCellPrefetchAhead;
  if (ahead >= last) return;
  const int64_t o = ahead / g.groups;
  const int grp = static_cast<int>(ahead - o * g.groups);
  const int cg = g.c_out / g.groups;
  const int32_t* rc = t.Cells((bin * num_rois + ids[o]) * g.groups + grp);
  const int64_t row_stride = static_cast<int64_t>(g.width) * g.channels;
  for (int q = 0; q < rc[0]; ++q) {
    for (int x = 0; x < rc[1]; ++x) {
      const int64_t cell =
          rc[2 + q] * row_stride + rc[2 + t.n2 + x] * g.channels + grp * cg;
      PrefetchSpan(a + cell, 4 * cg, 0);
      if (b != nullptr) PrefetchSpan(b + cell, 4 * cg, 1);
    }
  }
}

// [R, k*k, C] <-> [k*k, R, G, 8*NV]: the units visit one bin position of
// many RoIs, whose C-channel slices of the output (gradient) lie k*k*C
// floats (4 KB, a page) apart; read or written there one by one they miss
// cache and TLB on every RoI (perf: the loops stalled on those accesses,
// software prefetch did not help). A blocked transpose touches each RoI's
// row once, sequentially, and k*k sequential streams on the other side. The
// bin-major side has each group's cg channels padded to whole registers
// (padding 0), so the unit loops load and store it full-width (a masked
// store is microcoded on AMD Zen; unpadded, a full-width store would clobber
// the next slice, another unit's). Threaded over RoIs; every element is
// copied by one unit.
// RoIs [begin, end) of TransposeRoiBins.
template <int NV>
RFCN_SIMD_TARGET_AVX2 void TransposeRoiRange(const PoolGeometry& g,
                                             int64_t num_rois,
                                             const float* src, float* dst,
                                             bool to_bin_major, int64_t begin,
                                             int64_t end) {
  const int C = g.c_out, G = g.groups, cg = C / G;
  constexpr int cgp = 8 * NV;
  const int64_t bins = static_cast<int64_t>(g.k) * g.k;
  const __m256i mask = TailMask(cg);
  for (int64_t r = begin; r < end; ++r) {
    for (int64_t bin = 0; bin < bins; ++bin) {
      for (int grp = 0; grp < G; ++grp) {
        const int64_t a = (r * bins + bin) * C + grp * cg;
        const int64_t b = ((bin * num_rois + r) * G + grp) * cgp;
        Lanes<NV> v;
        if (to_bin_major) {
          rfcn_simd::Load<NV>(&v, src + a, mask);
          for (int q = 0; q < NV; ++q) _mm256_storeu_ps(dst + b + 8 * q, v.v[q]);
        } else {
          rfcn_simd::LoadPadded<NV>(&v, src + b);
          rfcn_simd::StoreFirst<NV>(dst + a, v, cg);
        }
      }
    }
  }
}

template <int NV>
void TransposeRoiBins(thread::ThreadPool* workers, const PoolGeometry& g,
                      int64_t num_rois, const float* src, float* dst,
                      bool to_bin_major) {
  const int64_t bins = static_cast<int64_t>(g.k) * g.k;
  workers->ParallelFor(
      num_rois,
      thread::ThreadPool::SchedulingParams::Adaptive(3 * bins * g.c_out),
      [&](int64_t begin, int64_t end) {
        TransposeRoiRange<NV>(g, num_rois, src, dst, to_bin_major, begin, end);
      });
}

// Per-thread scratch of the unit loops.
struct UnitScratch {
  std::vector<int64_t> count, sorted;
  std::vector<int> key;
};

// Cells [begin, end) (flat over images) of the map <-> block-major
// transposes: map [B, H, W, k*k*C] <-> [B, k*k, H, W, G, 8*NV], each
// group's cg channels padded to whole registers (padding 0). Per cell the
// map side is one contiguous k*k*C row; the block-major side is k*k
// sequential streams.
template <int NV>
RFCN_SIMD_TARGET_AVX2 void BlockMajorRange(const PoolGeometry& g,
                                           const float* src, float* dst,
                                           bool to_block_major, int64_t begin,
                                           int64_t end) {
  const int C = g.c_out, G = g.groups, cg = C / G;
  constexpr int cgp = 8 * NV;
  const int64_t bins = static_cast<int64_t>(g.k) * g.k;
  const int64_t plane = static_cast<int64_t>(g.height) * g.width;
  const __m256i mask = TailMask(cg);
  for (int64_t c = begin; c < end; ++c) {
    const int64_t b = c / plane, q = c - b * plane;
    for (int64_t bin = 0; bin < bins; ++bin) {
      for (int grp = 0; grp < G; ++grp) {
        const int64_t m = c * g.channels + bin * C + grp * cg;
        const int64_t d = (((b * bins + bin) * plane + q) * G + grp) * cgp;
        Lanes<NV> v;
        if (to_block_major) {
          rfcn_simd::Load<NV>(&v, src + m, mask);
          for (int k = 0; k < NV; ++k) _mm256_storeu_ps(dst + d + 8 * k, v.v[k]);
        } else {
          rfcn_simd::LoadPadded<NV>(&v, src + d);
          rfcn_simd::StoreFirst<NV>(dst + m, v, cg);
        }
      }
    }
  }
}

// The units read (write) the channel block of one bin position, cg floats
// per group and cell, one block per 4 KB map cell: copied per unit with
// that stride, each cell is a cache and TLB miss (perf: the per-unit copies
// were three quarters of the backward at 300 RoIs). One threaded transpose
// of the whole map reads (writes) the map sequentially instead, and hands
// every unit its block dense and padded: [H, W, G, 8*NV] at
// dst + (b * k*k + bin) * H*W*G*8*NV.
template <int NV>
void BlockMajor(thread::ThreadPool* workers, const PoolGeometry& g,
                const float* src, float* dst, bool to_block_major) {
  const int64_t cells = static_cast<int64_t>(g.batch) * g.height * g.width;
  workers->ParallelFor(
      cells, thread::ThreadPool::SchedulingParams::Adaptive(3 * g.channels),
      [&](int64_t begin, int64_t end) {
        BlockMajorRange<NV>(g, src, dst, to_block_major, begin, end);
      });
}

// The RoIs of unit (image b, bin) in the order it visits them: ascending
// (dense) or sorted by row (SortByRow, in *s). Returns the RoI count.
inline int64_t UnitRois(const PoolGeometry& g, const TapTable& t,
                        const ImageRois& ir, int64_t num_rois, int b, int bin,
                        bool dense, UnitScratch* s, const int64_t** ids) {
  const int64_t count = ir.start[b + 1] - ir.start[b];
  *ids = ir.order.data() + ir.start[b];
  if (!dense) {
    SortByRow(g, t, num_rois, bin, *ids, count, &s->count, &s->sorted,
              &s->key);
    *ids = s->sorted.data();
  }
  return count;
}

// Forward units [begin, end) for float, cg <= 8 * NV: every bin (i, j) of
// the image's RoIs, written bin-major into out_t [k*k, R, G, 8*NV] (padded;
// transposed back by the caller, TransposeRoiBins), each slice once. With
// `dense` (many RoIs per image) `features` is the block-major padded copy of
// the map (BlockMajor) and the unit visits its RoIs in ascending order; else
// it reads the map in place, RoIs sorted by row, prefetching the records,
// slices and cells of the items ahead.
template <int NV>
RFCN_SIMD_TARGET_AVX2 void DeformPoolForwardAvx2(
    const PoolGeometry& g, const float* features, const TapTable& t,
    const ImageRois& ir, int64_t num_rois, bool dense, float* out_t,
    int64_t begin, int64_t end) {
  const int k = g.k, C = g.c_out, n = g.sampling_ratio, G = g.groups;
  const int cg = C / G;
  constexpr int cgp = 8 * NV;
  const int64_t bins = static_cast<int64_t>(k) * k;
  const int64_t plane = static_cast<int64_t>(g.height) * g.width;
  const int64_t cell_stride = dense ? G * cgp : g.channels;
  const int64_t group_stride = dense ? cgp : cg;
  const int64_t row_stride = g.width * cell_stride;
  const __m256i mask = TailMask(cg);
  const __m256 inv = _mm256_set1_ps(1.f / static_cast<float>(n * n));
  UnitScratch s;
  for (int64_t u = begin; u < end; ++u) {
    const int b = static_cast<int>(u / bins);
    const int bin = static_cast<int>(u - static_cast<int64_t>(b) * bins);
    // features is the block-major copy (BlockMajor) when dense.
    const float* block =
        dense ? features + u * plane * cell_stride
              : features + rfcn_deform::pool_cell(g, b, 0, 0) +
                    static_cast<int64_t>(bin) * C;
    const int64_t* ids;
    const int64_t count = UnitRois(g, t, ir, num_rois, b, bin, dense, &s, &ids);
    const int64_t last = count * G;
    float* out_bin = out_t + bin * num_rois * G * cgp;
    for (int64_t it = 0; it < last; ++it) {
      const int64_t o = it / G;
      const int grp = static_cast<int>(it - o * G);
      if (!dense) {
        PrefetchAhead(g, t, num_rois, bin, ids, it, last, out_bin, 1, cgp);
        PrefetchItemCells(g, t, num_rois, bin, ids, it, last, block, nullptr);
      }
      const int64_t e = (bin * num_rois + ids[o]) * G + grp;
      const TapTable::Record rec = t.At(e);
      const float* slice = block + grp * group_stride;
      Lanes<NV> acc;
      rfcn_simd::Zero(&acc);
      for (int q = 0; q < rec.ny; ++q) {
        const float* row = slice + rec.yc[q] * row_stride;
        const float wy = rec.yw[q];
        for (int x = 0; x < rec.nx; ++x) {
          const __m256 w = _mm256_set1_ps(wy * rec.xw[x]);
          const float* p = row + rec.xc[x] * cell_stride;
          if (dense) {
            Lanes<NV> f;
            rfcn_simd::LoadPadded<NV>(&f, p);
            rfcn_simd::Fma<NV>(&acc, w, f);
          } else {
            rfcn_simd::LoadAdd<NV>(&acc, p, w, mask);
          }
        }
      }
      float* out = out_bin + (ids[o] * G + grp) * cgp;
      for (int q = 0; q < NV; ++q) {
        _mm256_storeu_ps(out + 8 * q, _mm256_mul_ps(acc.v[q], inv));
      }
    }
  }
}

// One item's output-gradient slice (8 * NV floats, padding lanes 0) divided
// by the bin's point count, as both backward kernels consume it.
template <int NV>
RFCN_SIMD_TARGET_AVX2 RFCN_SIMD_ALWAYS_INLINE Lanes<NV> ScaledGradSlice(
    const float* slice, __m256 inv) {
  Lanes<NV> gg;
  rfcn_simd::LoadPadded<NV>(&gg, slice);
  rfcn_simd::Scale<NV>(&gg, inv);
  return gg;
}

// Backward units [begin, end) for float, cg <= 8 * NV (see
// RfcnDeformPoolBackward), many RoIs per image. The unit's channel block (C
// floats per cell, one block per 4 KB map cell) comes dense [H, W, G, 8*NV]
// from the block-major copy of the map (each group's cg channels padded to
// whole registers, padding 0), and its feature gradient is accumulated in
// its own region of another block-major buffer, transposed back by the
// caller: the scattered per-RoI reads and read-modify-writes then stay
// within a few hundred KB (L2) instead of 2 x H*W pages (a TLB miss per cell
// otherwise), and run unmasked on whole registers (masked stores are
// microcoded on AMD Zen; an unpadded full-width store would overlap the next
// cell's load and defeat store forwarding). RoIs in ascending order: the padded bin-major output gradient
// (TransposeRoiBins) and the tap records are then read sequentially. Per
// cell one read of the features and one read-modify-write of the feature
// gradient; the offset gradient's per-channel sums stay in registers, and
// their channel dot product with the output gradient is one fixed-order
// reduction per item.
template <int NV>
RFCN_SIMD_TARGET_AVX2 void DeformPoolBackwardAvx2(
    const PoolGeometry& g, const float* features_bm, const TapTable& t,
    const float* grad_t, int64_t num_rois, const ImageRois& ir,
    float* grad_bm, float* grad_offsets, int64_t begin, int64_t end) {
  const int k = g.k, C = g.c_out, n = g.sampling_ratio, G = g.groups;
  constexpr int cgp = 8 * NV;  // padded group slice
  const int64_t bins = static_cast<int64_t>(k) * k;
  const int64_t plane = static_cast<int64_t>(g.height) * g.width;
  const int64_t cell_stride = static_cast<int64_t>(G) * cgp;
  const int64_t row_stride = g.width * cell_stride;
  const __m256 inv = _mm256_set1_ps(1.f / static_cast<float>(n * n));
  for (int64_t u = begin; u < end; ++u) {
    const int b = static_cast<int>(u / bins);
    const int bin = static_cast<int>(u - static_cast<int64_t>(b) * bins);
    const float* __restrict__ fd = features_bm + u * plane * cell_stride;
    float* __restrict__ gd = grad_bm + u * plane * cell_stride;
    std::memset(gd, 0, sizeof(float) * plane * cell_stride);
    const int64_t* ids = ir.order.data() + ir.start[b];
    const int64_t last = (ir.start[b + 1] - ir.start[b]) * G;
    for (int64_t it = 0; it < last; ++it) {
      const int64_t o = it / G;
      const int grp = static_cast<int>(it - o * G);
      const int64_t r = ids[o];
      const int64_t e = (bin * num_rois + r) * G + grp;
      const TapTable::Record rec = t.At(e);
      const Lanes<NV> gg = ScaledGradSlice<NV>(grad_t + e * cgp, inv);
      Lanes<NV> sy, sx, f;
      rfcn_simd::Zero(&sy);
      rfcn_simd::Zero(&sx);
      const int64_t ch = grp * cgp;
      for (int q = 0; q < rec.ny; ++q) {
        const int64_t row = rec.yc[q] * row_stride + ch;
        const float wy = rec.yw[q], dy = rec.ydw[q];
        for (int x = 0; x < rec.nx; ++x) {
          const int64_t cell = row + rec.xc[x] * cell_stride;
          rfcn_simd::LoadPadded<NV>(&f, fd + cell);
          rfcn_simd::Fma<NV>(&sy, _mm256_set1_ps(dy * rec.xw[x]), f);
          rfcn_simd::Fma<NV>(&sx, _mm256_set1_ps(wy * rec.xdw[x]), f);
          rfcn_simd::AddScaledToPadded<NV>(gd + cell, gg,
                                           _mm256_set1_ps(wy * rec.xw[x]));
        }
      }
      float* go = grad_offsets + (r * bins + bin) * 2 * G;
      go[2 * grp] = rfcn_simd::Dot<NV>(gg, sy) * t.scale[2 * r];
      go[2 * grp + 1] = rfcn_simd::Dot<NV>(gg, sx) * t.scale[2 * r + 1];
    }
  }
}

// Backward units [begin, end) with few RoIs per image (see
// DeformPoolBackwardFast): in place on the map, like the sparse forward. The
// caller has zeroed grad_features; the unit reads the features and
// read-modify-writes the feature gradient of its channel block where its
// RoIs' taps fall, RoIs sorted by row (SortByRow) so that consecutive RoIs
// touch neighbouring, still cached rows; their tap records and output
// gradient slices are prefetched ahead. The block's tail lanes belong to the
// neighbouring block (another unit): read masked, written with StoreFirst's
// exact-width pieces (no microcoded masked store). Same per-cell arithmetic
// and fixed order as the dense kernel.
template <int NV>
RFCN_SIMD_TARGET_AVX2 void DeformPoolBackwardSparseAvx2(
    const PoolGeometry& g, const float* features, const TapTable& t,
    const float* grad_t, int64_t num_rois, const ImageRois& ir,
    float* grad_features, float* grad_offsets, int64_t begin, int64_t end) {
  const int k = g.k, C = g.c_out, n = g.sampling_ratio, G = g.groups;
  const int cg = C / G;
  constexpr int cgp = 8 * NV;
  const int64_t bins = static_cast<int64_t>(k) * k;
  const int64_t cell_stride = g.channels;
  const int64_t row_stride = g.width * cell_stride;
  const __m256i mask = TailMask(cg);
  const __m256 inv = _mm256_set1_ps(1.f / static_cast<float>(n * n));
  UnitScratch s;
  for (int64_t u = begin; u < end; ++u) {
    const int b = static_cast<int>(u / bins);
    const int bin = static_cast<int>(u - static_cast<int64_t>(b) * bins);
    const int64_t base =
        rfcn_deform::pool_cell(g, b, 0, 0) + static_cast<int64_t>(bin) * C;
    const float* __restrict__ fd = features + base;
    float* __restrict__ gd = grad_features + base;
    const int64_t* ids;
    const int64_t count = UnitRois(g, t, ir, num_rois, b, bin, false, &s, &ids);
    const int64_t last = count * G;
    const float* slab = grad_t + bin * num_rois * G * cgp;
    for (int64_t it = 0; it < last; ++it) {
      const int64_t o = it / G;
      const int grp = static_cast<int>(it - o * G);
      PrefetchAhead(g, t, num_rois, bin, ids, it, last, slab, 0, cgp);
      PrefetchItemCells(g, t, num_rois, bin, ids, it, last, fd, gd);
      const int64_t r = ids[o];
      const int64_t e = (bin * num_rois + r) * G + grp;
      const TapTable::Record rec = t.At(e);
      const Lanes<NV> gg = ScaledGradSlice<NV>(grad_t + e * cgp, inv);
      Lanes<NV> sy, sx, f, d;
      rfcn_simd::Zero(&sy);
      rfcn_simd::Zero(&sx);
      const int64_t ch = grp * cg;
      for (int q = 0; q < rec.ny; ++q) {
        const int64_t row = rec.yc[q] * row_stride + ch;
        const float wy = rec.yw[q], dy = rec.ydw[q];
        for (int x = 0; x < rec.nx; ++x) {
          const int64_t cell = row + rec.xc[x] * cell_stride;
          rfcn_simd::Load<NV>(&f, fd + cell, mask);
          rfcn_simd::Fma<NV>(&sy, _mm256_set1_ps(dy * rec.xw[x]), f);
          rfcn_simd::Fma<NV>(&sx, _mm256_set1_ps(wy * rec.xdw[x]), f);
          rfcn_simd::Load<NV>(&d, gd + cell, mask);
          rfcn_simd::Fma<NV>(&d, _mm256_set1_ps(wy * rec.xw[x]), gg);
          rfcn_simd::StoreFirst<NV>(gd + cell, d, cg);
        }
      }
      float* go = grad_offsets + (r * bins + bin) * 2 * G;
      go[2 * grp] = rfcn_simd::Dot<NV>(gg, sy) * t.scale[2 * r];
      go[2 * grp + 1] = rfcn_simd::Dot<NV>(gg, sx) * t.scale[2 * r + 1];
    }
  }
}

// Whether the units work on block-major copies of the map (BlockMajor,
// dense, RoIs ascending) or in place (RoIs sorted by row). The copies cost
// about one cell visit per map cell and pass; a bin visits ~(n + 1)^2 cells
// per RoI and group.
inline bool DenseUnits(const PoolGeometry& g, int64_t rois_per_image) {
  static const int kDenseMode = [] {
    const char* e = std::getenv("RFCN_DEFORM_DENSE");
    return e == nullptr ? -1 : std::atoi(e);
  }();
  if (kDenseMode >= 0) return kDenseMode == 1;
  const int64_t plane = static_cast<int64_t>(g.height) * g.width;
  const int n = g.sampling_ratio;
  return rois_per_image * g.groups * (n + 1) * (n + 1) >= 2 * plane;
}

// The whole float32 forward (backward) of a call on the AVX2 path: tap
// table, unit loops, transposes. For cg = C / G <= 8 * NV.
template <int NV>
void DeformPoolForwardFast(OpKernelContext* ctx,
                                                 const PoolGeometry& g,
                                                 int64_t num_rois,
                                                 const float* features,
                                                 const float* rois,
                                                 const float* offsets,
                                                 float* output) {
  thread::ThreadPool* workers = CpuWorkers(ctx);
  const int n = g.sampling_ratio;
  const int64_t bins = static_cast<int64_t>(g.k) * g.k;
  const int64_t padded = bins * num_rois * g.groups * 8 * NV;
  TapTable t;
  BuildTapTable(workers, g, num_rois, rois, offsets, false, &t);
  // Units (image, bin position); RoIs with an invalid batch index
  // (rejected by the op on CPU) are in no unit and pool 0.
  const ImageRois ir = GroupByImage(g, num_rois, rois);
  const int64_t rois_per_image = std::max<int64_t>(
      1, static_cast<int64_t>(ir.order.size()) / std::max(g.batch, 1));
  const int64_t plane = static_cast<int64_t>(g.height) * g.width;
  const bool dense = DenseUnits(g, rois_per_image);
  Scratch<float> block_major;
  if (dense) {
    block_major.Reset(g.batch * bins * plane * g.groups * 8 * NV);
    BlockMajor<NV>(workers, g, features, block_major.get(), true);
    features = block_major.get();
  }
  Scratch<float> out_t(padded);
  if (static_cast<int64_t>(ir.order.size()) < num_rois) {
    std::fill(out_t.get(), out_t.get() + padded, 0.f);  // their 0 output
  }
  workers->ParallelFor(
      static_cast<int64_t>(g.batch) * bins,
      thread::ThreadPool::SchedulingParams::Adaptive(
          rois_per_image * g.groups * (20 + 4 * (n + 1) * (n + 1) * NV)),
      [&](int64_t begin, int64_t end) {
        DeformPoolForwardAvx2<NV>(g, features, t, ir, num_rois, dense,
                                  out_t.get(), begin, end);
      });
  TransposeRoiBins<NV>(workers, g, num_rois, out_t.get(), output, false);
}

template <int NV>
void DeformPoolBackwardFast(
    OpKernelContext* ctx, const PoolGeometry& g, int64_t num_rois,
    const float* features, const float* rois, const float* offsets,
    const float* grad, float* grad_features, float* grad_offsets) {
  thread::ThreadPool* workers = CpuWorkers(ctx);
  const int n = g.sampling_ratio;
  const int64_t bins = static_cast<int64_t>(g.k) * g.k;
  const int64_t plane = static_cast<int64_t>(g.height) * g.width;
  TapTable t;
  BuildTapTable(workers, g, num_rois, rois, offsets, true, &t);
  const ImageRois ir = GroupByImage(g, num_rois, rois);
  const int64_t rois_per_image =
      std::max<int64_t>(1, static_cast<int64_t>(ir.order.size()) / g.batch);
  Scratch<float> grad_t(bins * num_rois * g.groups * 8 * NV);
  TransposeRoiBins<NV>(workers, g, num_rois, grad, grad_t.get(), true);
  const int64_t cost =
      rois_per_image * g.groups * (20 + 8 * (n + 1) * (n + 1) * NV) +
      4 * plane * g.groups * NV;
  if (!DenseUnits(g, rois_per_image)) {
    // In place: zero the feature gradient (one sequential pass), then the
    // units add their taps.
    const int64_t cells = static_cast<int64_t>(g.batch) * plane;
    workers->ParallelFor(
        cells, thread::ThreadPool::SchedulingParams::Adaptive(g.channels),
        [&](int64_t begin, int64_t end) {
          std::memset(grad_features + begin * g.channels, 0,
                      sizeof(float) * (end - begin) * g.channels);
        });
    workers->ParallelFor(
        static_cast<int64_t>(g.batch) * bins,
        thread::ThreadPool::SchedulingParams::Adaptive(cost),
        [&](int64_t begin, int64_t end) {
          DeformPoolBackwardSparseAvx2<NV>(g, features, t, grad_t.get(),
                                           num_rois, ir, grad_features,
                                           grad_offsets, begin, end);
        });
    return;
  }
  const int64_t block_floats = g.batch * bins * plane * g.groups * 8 * NV;
  Scratch<float> features_bm(block_floats);
  Scratch<float> grad_bm(block_floats);
  BlockMajor<NV>(workers, g, features, features_bm.get(), true);
  workers->ParallelFor(
      static_cast<int64_t>(g.batch) * bins,
      thread::ThreadPool::SchedulingParams::Adaptive(cost),
      [&](int64_t begin, int64_t end) {
        DeformPoolBackwardAvx2<NV>(g, features_bm.get(), t, grad_t.get(),
                                   num_rois, ir, grad_bm.get(), grad_offsets,
                                   begin, end);
      });
  BlockMajor<NV>(workers, g, grad_bm.get(), grad_features, false);
}

using DeformForwardFn = void (*)(OpKernelContext*, const PoolGeometry&,
                                 int64_t, const float*, const float*,
                                 const float*, float*);
using DeformBackwardFn = void (*)(OpKernelContext*, const PoolGeometry&,
                                  int64_t, const float*, const float*,
                                  const float*, const float*, float*, float*);

// The register-blocked path for cg <= 32 channels per offset group and
// sampling_ratio <= kMaxTableSamples on an AVX2 + FMA CPU, or null (then
// the portable loops run).
DeformForwardFn PickForwardAvx2(const PoolGeometry& g) {
  if (!rfcn_simd::CpuHasAvx2Fma() || g.sampling_ratio > kMaxTableSamples) {
    return nullptr;
  }
  switch ((g.c_out / g.groups + 7) / 8) {
    case 1: return DeformPoolForwardFast<1>;
    case 2: return DeformPoolForwardFast<2>;
    case 3: return DeformPoolForwardFast<3>;
    case 4: return DeformPoolForwardFast<4>;
    default: return nullptr;
  }
}

DeformBackwardFn PickBackwardAvx2(const PoolGeometry& g) {
  if (!rfcn_simd::CpuHasAvx2Fma() || g.sampling_ratio > kMaxTableSamples) {
    return nullptr;
  }
  switch ((g.c_out / g.groups + 7) / 8) {
    case 1: return DeformPoolBackwardFast<1>;
    case 2: return DeformPoolBackwardFast<2>;
    case 3: return DeformPoolBackwardFast<3>;
    case 4: return DeformPoolBackwardFast<4>;
    default: return nullptr;
  }
}
#endif  // RFCN_SIMD_HAVE_AVX2_DISPATCH

}  // namespace

namespace functor {

template <typename T>
struct RfcnDeformPoolForward<CPUDevice, T> {
  void operator()(OpKernelContext* ctx, const PoolGeometry& g,
                  int64_t num_rois, const T* features, const float* rois,
                  const T* offsets, T* output) {
    const int k = g.k, C = g.c_out, n = g.sampling_ratio;
    const int cg = C / g.groups;
    const int64_t bins = static_cast<int64_t>(k) * k;
    const int64_t total = num_rois * bins;
    if (total == 0 || C == 0) return;
    const int64_t cost = 40 * g.groups + static_cast<int64_t>(n + 1) * (n + 1) * (4 + 2 * C);
#if RFCN_SIMD_HAVE_AVX2_DISPATCH
    if constexpr (std::is_same<T, float>::value) {
      if (const DeformForwardFn fast = PickForwardAvx2(g)) {
        fast(ctx, g, num_rois, features, rois, offsets, output);
        return;
      }
    }
#endif
    auto work = [&](int64_t begin, int64_t end) {
      std::vector<T> acc_buffer(C);
      BinCells cells(n);
      T* __restrict__ acc = acc_buffer.data();
      const T inv = T(1) / static_cast<T>(n * n);
      RoiAxes a{};
      int64_t read_roi = -1;
      for (int64_t u = begin; u < end; ++u) {
        const int64_t r = u / bins;
        const int bin = static_cast<int>(u - r * bins);
        const int i = bin / k, j = bin - (bin / k) * k;
        T* out = output + u * C;
        int b;
        if (!rfcn_deform::roi_batch_index(rois[r * 5], g.batch, &b)) {
          std::fill(out, out + C, T(0));
          continue;
        }
        if (r != read_roi) {  // once per RoI (and per shard boundary)
          a = ReadRoi(g, rois + r * 5);
          read_roi = r;
        }
        std::fill(acc, acc + C, T(0));
        const T* block = features + rfcn_deform::pool_cell(g, b, 0, 0) +
                         static_cast<int64_t>(bin) * C;
        for (int grp = 0; grp < g.groups; ++grp) {
          cells.Fill(g, a, offsets, r, i, j, grp);
          T* __restrict__ ag = acc + grp * cg;
          for (int q = 0; q < cells.ny; ++q) {
            const T* row = block + static_cast<int64_t>(cells.ycell[q]) *
                                       g.width * g.channels + grp * cg;
            for (int t = 0; t < cells.nx; ++t) {
              const T wt = static_cast<T>(cells.yw[q] * cells.xw[t]);
              const T* __restrict__ v =
                  row + static_cast<int64_t>(cells.xcell[t]) * g.channels;
              for (int c = 0; c < cg; ++c) ag[c] += wt * v[c];
            }
          }
        }
        for (int c = 0; c < C; ++c) out[c] = acc[c] * inv;
      }
    };
    CpuWorkers(ctx)->ParallelFor(
        total, thread::ThreadPool::SchedulingParams::Adaptive(cost), work);
  }
};

// One fused pass: a unit is (image b, bin position (i, j)); it owns channel
// block (i*k + j) of image b in grad_features and the offset gradients of
// bin (i, j) of the RoIs of image b, and visits those RoIs in ascending row
// order. Per distinct cell it reads the features once (for the offset
// gradient's channel dot product) and writes the feature gradient once.
template <typename T>
struct RfcnDeformPoolBackward<CPUDevice, T> {
  void operator()(OpKernelContext* ctx, const PoolGeometry& g,
                  int64_t num_rois, const T* features, const float* rois,
                  const T* offsets, const T* grad, T* grad_features,
                  T* grad_offsets) {
    const int k = g.k, C = g.c_out, n = g.sampling_ratio;
    const int cg = C / g.groups;
    const int64_t bins = static_cast<int64_t>(k) * k;
    const int64_t plane = static_cast<int64_t>(g.height) * g.width;
    const T inv = T(1) / static_cast<T>(n * n);
    // RoI rows of each image, ascending (CSR); rows with an invalid batch
    // index (rejected by the op on CPU) get zero offset gradients.
    for (int64_t r = 0; r < num_rois; ++r) {
      int b;
      if (!rfcn_deform::roi_batch_index(rois[r * 5], g.batch, &b)) {
        std::fill(grad_offsets + r * bins * 2 * g.groups,
                  grad_offsets + (r + 1) * bins * 2 * g.groups, T(0));
      }
    }
    if (g.batch == 0 || plane == 0 || C == 0) {
      std::fill(grad_offsets, grad_offsets + num_rois * bins * 2 * g.groups, T(0));
      return;
    }
    const ImageRois ir = GroupByImage(g, num_rois, rois);
    const std::vector<int64_t>& start = ir.start;
    const std::vector<int64_t>& order = ir.order;
    const int64_t rois_per_image =
        std::max<int64_t>(1, static_cast<int64_t>(order.size()) / g.batch);
    const int64_t cost =
        rois_per_image * (40 * g.groups + static_cast<int64_t>(n + 1) * (n + 1) * (4 + 4 * C)) +
        plane * C;
#if RFCN_SIMD_HAVE_AVX2_DISPATCH
    if constexpr (std::is_same<T, float>::value) {
      if (const DeformBackwardFn fast = PickBackwardAvx2(g)) {
        fast(ctx, g, num_rois, features, rois, offsets, grad, grad_features,
             grad_offsets);
        return;
      }
    }
#endif
    auto work = [&](int64_t begin, int64_t end) {
      BinCells cells(n);
      std::vector<T> sums(2 * static_cast<size_t>(cg));
      T* sum_y = sums.data();
      T* sum_x = sums.data() + cg;
      for (int64_t u = begin; u < end; ++u) {
        const int b = static_cast<int>(u / bins);
        const int bin = static_cast<int>(u - static_cast<int64_t>(b) * bins);
        const int i = bin / k, j = bin - (bin / k) * k;
        const int64_t base = rfcn_deform::pool_cell(g, b, 0, 0) +
                             static_cast<int64_t>(bin) * C;
        T* gblock = grad_features + base;
        const T* fblock = features + base;
        for (int64_t q = 0; q < plane; ++q) {
          std::fill(gblock + q * g.channels, gblock + q * g.channels + C, T(0));
        }
        for (int64_t o = start[b]; o < start[b + 1]; ++o) {
          const int64_t r = order[o];
          const RoiAxes a = ReadRoi(g, rois + r * 5);
          const T* gr = grad + (r * bins + bin) * C;
          T* go = grad_offsets + (r * bins + bin) * 2 * g.groups;
          for (int grp = 0; grp < g.groups; ++grp) {
            cells.Fill(g, a, offsets, r, i, j, grp);
            const int64_t ch = grp * cg;
            // d out / d dy = sum_c grad[c] * sum_cells DWy Wx f[c]: the cell
            // sums are accumulated per channel (element-wise; a per-cell
            // channel dot product would be a serial float reduction), then
            // one dot product per (bin, group).
            T* __restrict__ sy = sum_y;
            T* __restrict__ sx = sum_x;
            std::fill(sy, sy + cg, T(0));
            std::fill(sx, sx + cg, T(0));
            const T* __restrict__ gg = gr + ch;
            for (int q = 0; q < cells.ny; ++q) {
              const int64_t row = static_cast<int64_t>(cells.ycell[q]) * g.width;
              for (int t = 0; t < cells.nx; ++t) {
                const int64_t cell = (row + cells.xcell[t]) * g.channels + ch;
                const T wt = static_cast<T>(cells.yw[q] * cells.xw[t]) * inv;
                const T wy = static_cast<T>(cells.ydw[q] * cells.xw[t]);
                const T wx = static_cast<T>(cells.yw[q] * cells.xdw[t]);
                const T* __restrict__ f = fblock + cell;
                T* __restrict__ d = gblock + cell;
                for (int c = 0; c < cg; ++c) {
                  d[c] += gg[c] * wt;
                  sy[c] += wy * f[c];
                  sx[c] += wx * f[c];
                }
              }
            }
            T gy = T(0), gx = T(0);
            for (int c = 0; c < cg; ++c) {
              gy += gg[c] * sy[c];
              gx += gg[c] * sx[c];
            }
            go[2 * grp] = gy * inv * static_cast<T>(g.trans_std * a.yext);
            go[2 * grp + 1] = gx * inv * static_cast<T>(g.trans_std * a.xext);
          }
        }
      }
    };
    CpuWorkers(ctx)->ParallelFor(
        static_cast<int64_t>(g.batch) * bins,
        thread::ThreadPool::SchedulingParams::Adaptive(cost), work);
  }
};

template <typename T>
struct RfcnDeformIm2ColForward<CPUDevice, T> {
  void operator()(OpKernelContext* ctx, const ConvGeometry& g, const T* input,
                  const T* offsets, const T* mask, T* columns) {
    const int taps = g.kh * g.kw, C = g.channels;
    const int64_t pixels = static_cast<int64_t>(g.batch) * g.out_h * g.out_w;
    if (pixels == 0) return;
    const int64_t cost = taps * (60 + 5 * static_cast<int64_t>(C));
    auto work = [&](int64_t begin, int64_t end) {
      for (int64_t pix = begin; pix < end; ++pix) {
        const int wo = static_cast<int>(pix % g.out_w);
        const int ho = static_cast<int>((pix / g.out_w) % g.out_h);
        const int b = static_cast<int>(pix / (static_cast<int64_t>(g.out_w) * g.out_h));
        const T* off = offsets + pix * 2 * taps;
        const T* m = mask + pix * taps;
        for (int t = 0; t < taps; ++t) {
          double y, x;
          rfcn_deform::conv_position(g, off, ho, wo, t / g.kw, t % g.kw, &y, &x);
          Corners q;
          rfcn_deform::conv_corners(y, x, g, b, &q);
          T* __restrict__ dst = columns + (pix * taps + t) * C;
          bool first = true;
          for (int s = 0; s < 4; ++s) {
            if (q.w[s] == 0.0) continue;
            const T w = static_cast<T>(q.w[s]) * m[t];
            const T* __restrict__ f = input + q.cell[s];
            if (first) {
              for (int c = 0; c < C; ++c) dst[c] = w * f[c];
              first = false;
            } else {
              for (int c = 0; c < C; ++c) dst[c] += w * f[c];
            }
          }
          if (first) std::fill(dst, dst + C, T(0));
        }
      }
    };
    CpuWorkers(ctx)->ParallelFor(
        pixels, thread::ThreadPool::SchedulingParams::Adaptive(cost), work);
  }
};

template <typename T>
struct RfcnDeformIm2ColBackward<CPUDevice, T> {
  void operator()(OpKernelContext* ctx, const ConvGeometry& g, const T* input,
                  const T* offsets, const T* mask, const T* grad_columns,
                  T* grad_input, T* grad_offsets, T* grad_mask) {
    const int taps = g.kh * g.kw, C = g.channels;
    const int64_t out_plane = static_cast<int64_t>(g.out_h) * g.out_w;
    const int64_t pixels = g.batch * out_plane;
    thread::ThreadPool* workers = CpuWorkers(ctx);
    // Offsets and mask: one unit per output pixel.
    if (pixels > 0) {
      auto work = [&](int64_t begin, int64_t end) {
        for (int64_t pix = begin; pix < end; ++pix) {
          const int wo = static_cast<int>(pix % g.out_w);
          const int ho = static_cast<int>((pix / g.out_w) % g.out_h);
          const int b = static_cast<int>(pix / out_plane);
          for (int t = 0; t < taps; ++t) {
            rfcn_deform::conv_offset_grad(
                input, offsets, mask, grad_columns + (pix * taps + t) * C, g, b,
                ho, wo, t, &grad_offsets[(pix * taps + t) * 2],
                &grad_offsets[(pix * taps + t) * 2 + 1],
                &grad_mask[pix * taps + t]);
          }
        }
      };
      workers->ParallelFor(
          pixels,
          thread::ThreadPool::SchedulingParams::Adaptive(taps * (60 + 8 * C)),
          work);
    }
    // Input: one unit per (image, channel chunk); chunks of >= 16 channels,
    // enough units to keep every thread busy.
    const int64_t plane = static_cast<int64_t>(g.height) * g.width;
    if (g.batch == 0 || plane == 0 || C == 0) return;
    const int64_t want = 4 * static_cast<int64_t>(workers->NumThreads());
    int64_t chunks = std::max<int64_t>(1, (want + g.batch - 1) / g.batch);
    chunks = std::min<int64_t>(chunks, std::max(1, C / 16));
    const int chunk = static_cast<int>((C + chunks - 1) / chunks);
    chunks = (C + chunk - 1) / chunk;
    const int64_t cost = out_plane * taps * (60 + 8 * chunk) + plane * chunk;
    auto work = [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) {
        const int b = static_cast<int>(u / chunks);
        const int c0 = static_cast<int>(u - static_cast<int64_t>(b) * chunks) * chunk;
        const int len = std::min(chunk, C - c0);
        T* image = grad_input + static_cast<int64_t>(b) * plane * C + c0;
        for (int64_t q = 0; q < plane; ++q) {
          std::fill(image + q * C, image + q * C + len, T(0));
        }
        for (int64_t p = 0; p < out_plane; ++p) {
          const int64_t pix = b * out_plane + p;
          const int ho = static_cast<int>(p / g.out_w);
          const int wo = static_cast<int>(p - static_cast<int64_t>(ho) * g.out_w);
          const T* off = offsets + pix * 2 * taps;
          const T* m = mask + pix * taps;
          for (int t = 0; t < taps; ++t) {
            double y, x;
            rfcn_deform::conv_position(g, off, ho, wo, t / g.kw, t % g.kw, &y, &x);
            Corners q;
            rfcn_deform::conv_corners(y, x, g, b, &q);
            const T* __restrict__ gc = grad_columns + (pix * taps + t) * C + c0;
            for (int s = 0; s < 4; ++s) {
              if (q.w[s] == 0.0) continue;
              const T w = static_cast<T>(q.w[s]) * m[t];
              T* __restrict__ d = grad_input + q.cell[s] + c0;
              for (int c = 0; c < len; ++c) d[c] += w * gc[c];
            }
          }
        }
      }
    };
    workers->ParallelFor(static_cast<int64_t>(g.batch) * chunks,
                         thread::ThreadPool::SchedulingParams::Adaptive(cost),
                         work);
  }
};

}  // namespace functor

namespace {

// ------------------------------------------------------------ pool kernels

struct PoolAttrs {
  int k;
  float spatial_scale;
  int sampling_ratio;
  float trans_std;
  int groups;
};

absl::Status ReadPoolAttrs(OpKernelConstruction* ctx, PoolAttrs* a) {
  TF_RETURN_IF_ERROR(ctx->GetAttr("output_size", &a->k));
  TF_RETURN_IF_ERROR(ctx->GetAttr("spatial_scale", &a->spatial_scale));
  TF_RETURN_IF_ERROR(ctx->GetAttr("sampling_ratio", &a->sampling_ratio));
  TF_RETURN_IF_ERROR(ctx->GetAttr("trans_std", &a->trans_std));
  TF_RETURN_IF_ERROR(ctx->GetAttr("offset_groups", &a->groups));
  if (!(std::isfinite(a->spatial_scale) && a->spatial_scale > 0.f)) {
    return errors::InvalidArgument(
        "RfcnDeformPsRoiPool: spatial_scale must be a finite number > 0, got ",
        a->spatial_scale);
  }
  if (!std::isfinite(a->trans_std)) {
    return errors::InvalidArgument(
        "RfcnDeformPsRoiPool: trans_std must be finite, got ", a->trans_std);
  }
  return absl::OkStatus();
}

absl::Status CheckPoolInputs(const Tensor& features, const Tensor& rois,
                             const Tensor& offsets, const PoolAttrs& a,
                             PoolGeometry* g) {
  if (features.dims() != 4) {
    return errors::InvalidArgument(
        "RfcnDeformPsRoiPool: features must be rank 4 [B, H, W, k*k*C], got "
        "shape ", features.shape().DebugString());
  }
  for (int d = 0; d < 4; ++d) {
    if (features.dim_size(d) > INT_MAX / 2) {
      return errors::InvalidArgument("RfcnDeformPsRoiPool: features dimension ",
                                     d, " is too large");
    }
  }
  if (features.dim_size(1) < 1 || features.dim_size(2) < 1) {
    return errors::InvalidArgument(
        "RfcnDeformPsRoiPool: features height and width must be >= 1, got "
        "shape ", features.shape().DebugString());
  }
  if (rois.dims() != 2 || rois.dim_size(1) != 5) {
    return errors::InvalidArgument(
        "RfcnDeformPsRoiPool: rois must be [R, 5] rows (batch_index, y1, x1, "
        "y2, x2), got shape ", rois.shape().DebugString());
  }
  const int64_t kk = static_cast<int64_t>(a.k) * a.k;
  if (features.dim_size(3) % (kk * a.groups) != 0) {
    return errors::InvalidArgument(
        "RfcnDeformPsRoiPool: features channels (", features.dim_size(3),
        ") must be divisible by output_size^2 * offset_groups = ", kk, " * ",
        a.groups);
  }
  const TensorShape expected({rois.dim_size(0), a.k, a.k, 2 * a.groups});
  if (offsets.shape() != expected) {
    return errors::InvalidArgument(
        "RfcnDeformPsRoiPool: offsets must be [R, k, k, 2*offset_groups] = ",
        expected.DebugString(), ", got shape ", offsets.shape().DebugString());
  }
  g->batch = static_cast<int>(features.dim_size(0));
  g->height = static_cast<int>(features.dim_size(1));
  g->width = static_cast<int>(features.dim_size(2));
  g->channels = static_cast<int>(features.dim_size(3));
  g->k = a.k;
  g->c_out = static_cast<int>(features.dim_size(3) / kk);
  g->groups = a.groups;
  g->spatial_scale = a.spatial_scale;
  g->sampling_ratio = a.sampling_ratio;
  g->trans_std = a.trans_std;
  return absl::OkStatus();
}

absl::Status CheckBatchIndices(const Tensor& rois, int batch) {
  return rfcn_common::CheckRoiBatchIndices(rois, batch, "RfcnDeformPsRoiPool",
                                           rfcn_deform::roi_batch_index);
}

}  // namespace

template <typename Device, typename T>
class RfcnDeformPsRoiPoolOp : public OpKernel {
 public:
  explicit RfcnDeformPsRoiPoolOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadPoolAttrs(ctx, &attrs_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& features = ctx->input(0);
    const Tensor& rois = ctx->input(1);
    const Tensor& offsets = ctx->input(2);
    PoolGeometry g;
    OP_REQUIRES_OK(ctx, CheckPoolInputs(features, rois, offsets, attrs_, &g));
    if (std::is_same<Device, CPUDevice>::value) {
      OP_REQUIRES_OK(ctx, CheckBatchIndices(rois, g.batch));
    }
    const int64_t num_rois = rois.dim_size(0);
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({num_rois, g.k, g.k, g.c_out}),
                            &output));
    if (output->NumElements() == 0) return;
    functor::RfcnDeformPoolForward<Device, T>()(
        ctx, g, num_rois, features.flat<T>().data(), rois.flat<float>().data(),
        offsets.flat<T>().data(), output->flat<T>().data());
  }

 private:
  PoolAttrs attrs_;
};

template <typename Device, typename T>
class RfcnDeformPsRoiPoolGradOp : public OpKernel {
 public:
  explicit RfcnDeformPsRoiPoolGradOp(OpKernelConstruction* ctx)
      : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadPoolAttrs(ctx, &attrs_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& features = ctx->input(0);
    const Tensor& rois = ctx->input(1);
    const Tensor& offsets = ctx->input(2);
    const Tensor& grad = ctx->input(3);
    PoolGeometry g;
    OP_REQUIRES_OK(ctx, CheckPoolInputs(features, rois, offsets, attrs_, &g));
    const int64_t num_rois = rois.dim_size(0);
    const TensorShape expected({num_rois, g.k, g.k, g.c_out});
    OP_REQUIRES(ctx, grad.shape() == expected,
                errors::InvalidArgument(
                    "RfcnDeformPsRoiPoolGrad: grad must be [R, k, k, C] = ",
                    expected.DebugString(), ", got shape ",
                    grad.shape().DebugString()));
    if (std::is_same<Device, CPUDevice>::value) {
      OP_REQUIRES_OK(ctx, CheckBatchIndices(rois, g.batch));
    }
    Tensor* grad_features = nullptr;
    Tensor* grad_offsets = nullptr;
    OP_REQUIRES_OK(ctx,
                   ctx->allocate_output(0, features.shape(), &grad_features));
    OP_REQUIRES_OK(ctx,
                   ctx->allocate_output(1, offsets.shape(), &grad_offsets));
    if (grad_features->NumElements() == 0 && grad_offsets->NumElements() == 0) {
      return;
    }
    functor::RfcnDeformPoolBackward<Device, T>()(
        ctx, g, num_rois, features.flat<T>().data(), rois.flat<float>().data(),
        offsets.flat<T>().data(), grad.flat<T>().data(),
        grad_features->flat<T>().data(), grad_offsets->flat<T>().data());
  }

 private:
  PoolAttrs attrs_;
};

// ---------------------------------------------------------- im2col kernels

namespace {

struct ConvAttrs {
  std::vector<int32> kernel_size, strides, dilations, pads;
  int padding;
};

absl::Status ReadConvAttrs(OpKernelConstruction* ctx, ConvAttrs* a) {
  std::string padding;
  TF_RETURN_IF_ERROR(ctx->GetAttr("kernel_size", &a->kernel_size));
  TF_RETURN_IF_ERROR(ctx->GetAttr("strides", &a->strides));
  TF_RETURN_IF_ERROR(ctx->GetAttr("dilations", &a->dilations));
  TF_RETURN_IF_ERROR(ctx->GetAttr("padding", &padding));
  TF_RETURN_IF_ERROR(ctx->GetAttr("explicit_paddings", &a->pads));
  if (a->kernel_size.size() != 2 || a->strides.size() != 2 ||
      a->dilations.size() != 2) {
    return errors::InvalidArgument(
        "RfcnDeformIm2Col: kernel_size, strides and dilations must have 2 "
        "entries (rows, columns)");
  }
  for (int d = 0; d < 2; ++d) {
    if (a->kernel_size[d] < 1 || a->strides[d] < 1 || a->dilations[d] < 1) {
      return errors::InvalidArgument(
          "RfcnDeformIm2Col: kernel_size, strides and dilations must be >= 1");
    }
  }
  a->padding = padding == "SAME"    ? rfcn_deform::kSame
               : padding == "VALID" ? rfcn_deform::kValid
                                    : rfcn_deform::kExplicit;
  if (a->padding == rfcn_deform::kExplicit) {
    if (a->pads.size() != 4 || *std::min_element(a->pads.begin(), a->pads.end()) < 0) {
      return errors::InvalidArgument(
          "RfcnDeformIm2Col: padding EXPLICIT needs explicit_paddings = [top, "
          "bottom, left, right] >= 0");
    }
  } else {
    a->pads.assign(4, 0);
  }
  return absl::OkStatus();
}

absl::Status CheckConvInputs(const Tensor& input, const Tensor& offsets,
                             const Tensor& mask, const ConvAttrs& a,
                             ConvGeometry* g) {
  if (input.dims() != 4) {
    return errors::InvalidArgument(
        "RfcnDeformIm2Col: input must be rank 4 [B, H, W, Cin], got shape ",
        input.shape().DebugString());
  }
  for (int d = 0; d < 4; ++d) {
    if (input.dim_size(d) > INT_MAX / 4) {
      return errors::InvalidArgument("RfcnDeformIm2Col: input dimension ", d,
                                     " is too large");
    }
  }
  g->batch = static_cast<int>(input.dim_size(0));
  g->height = static_cast<int>(input.dim_size(1));
  g->width = static_cast<int>(input.dim_size(2));
  g->channels = static_cast<int>(input.dim_size(3));
  g->kh = a.kernel_size[0];
  g->kw = a.kernel_size[1];
  g->stride_h = a.strides[0];
  g->stride_w = a.strides[1];
  g->dil_h = a.dilations[0];
  g->dil_w = a.dilations[1];
  rfcn_deform::conv_axis(a.padding, g->height, g->kh, g->stride_h, g->dil_h,
                         a.pads[0], a.pads[1], &g->out_h, &g->pad_top);
  rfcn_deform::conv_axis(a.padding, g->width, g->kw, g->stride_w, g->dil_w,
                         a.pads[2], a.pads[3], &g->out_w, &g->pad_left);
  if (g->out_h < 1 || g->out_w < 1) {
    return errors::InvalidArgument(
        "RfcnDeformIm2Col: input ", input.shape().DebugString(),
        " is smaller than the dilated kernel with this padding: no output");
  }
  const int64_t taps = static_cast<int64_t>(g->kh) * g->kw;
  const TensorShape off_shape({g->batch, g->out_h, g->out_w, 2 * taps});
  const TensorShape mask_shape({g->batch, g->out_h, g->out_w, taps});
  if (offsets.shape() != off_shape) {
    return errors::InvalidArgument(
        "RfcnDeformIm2Col: offsets must be [B, Ho, Wo, 2*kh*kw] = ",
        off_shape.DebugString(), ", got shape ", offsets.shape().DebugString());
  }
  if (mask.shape() != mask_shape) {
    return errors::InvalidArgument(
        "RfcnDeformIm2Col: mask must be [B, Ho, Wo, kh*kw] = ",
        mask_shape.DebugString(), ", got shape ", mask.shape().DebugString());
  }
  return absl::OkStatus();
}

TensorShape ColumnsShape(const ConvGeometry& g) {
  return TensorShape({g.batch, g.out_h, g.out_w,
                      static_cast<int64_t>(g.kh) * g.kw * g.channels});
}

}  // namespace

template <typename Device, typename T>
class RfcnDeformIm2ColOp : public OpKernel {
 public:
  explicit RfcnDeformIm2ColOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadConvAttrs(ctx, &attrs_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& input = ctx->input(0);
    const Tensor& offsets = ctx->input(1);
    const Tensor& mask = ctx->input(2);
    ConvGeometry g;
    OP_REQUIRES_OK(ctx, CheckConvInputs(input, offsets, mask, attrs_, &g));
    Tensor* columns = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ColumnsShape(g), &columns));
    if (columns->NumElements() == 0) return;
    functor::RfcnDeformIm2ColForward<Device, T>()(
        ctx, g, input.flat<T>().data(), offsets.flat<T>().data(),
        mask.flat<T>().data(), columns->flat<T>().data());
  }

 private:
  ConvAttrs attrs_;
};

template <typename Device, typename T>
class RfcnDeformIm2ColGradOp : public OpKernel {
 public:
  explicit RfcnDeformIm2ColGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadConvAttrs(ctx, &attrs_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& input = ctx->input(0);
    const Tensor& offsets = ctx->input(1);
    const Tensor& mask = ctx->input(2);
    const Tensor& grad = ctx->input(3);
    ConvGeometry g;
    OP_REQUIRES_OK(ctx, CheckConvInputs(input, offsets, mask, attrs_, &g));
    OP_REQUIRES(ctx, grad.shape() == ColumnsShape(g),
                errors::InvalidArgument(
                    "RfcnDeformIm2ColGrad: grad_columns must be ",
                    ColumnsShape(g).DebugString(), ", got shape ",
                    grad.shape().DebugString()));
    Tensor *grad_input = nullptr, *grad_offsets = nullptr, *grad_mask = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, input.shape(), &grad_input));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, offsets.shape(), &grad_offsets));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, mask.shape(), &grad_mask));
    if (grad_input->NumElements() == 0 && grad_offsets->NumElements() == 0) {
      return;
    }
    functor::RfcnDeformIm2ColBackward<Device, T>()(
        ctx, g, input.flat<T>().data(), offsets.flat<T>().data(),
        mask.flat<T>().data(), grad.flat<T>().data(),
        grad_input->flat<T>().data(), grad_offsets->flat<T>().data(),
        grad_mask->flat<T>().data());
  }

 private:
  ConvAttrs attrs_;
};

#define RFCN_DEFORM_REGISTER(DEV, DEVICE, T)                               \
  REGISTER_KERNEL_BUILDER(                                                 \
      Name("RfcnDeformPsRoiPool").Device(DEV).TypeConstraint<T>("T"),      \
      RfcnDeformPsRoiPoolOp<DEVICE, T>);                                   \
  REGISTER_KERNEL_BUILDER(                                                 \
      Name("RfcnDeformPsRoiPoolGrad").Device(DEV).TypeConstraint<T>("T"),  \
      RfcnDeformPsRoiPoolGradOp<DEVICE, T>);                               \
  REGISTER_KERNEL_BUILDER(                                                 \
      Name("RfcnDeformIm2Col").Device(DEV).TypeConstraint<T>("T"),         \
      RfcnDeformIm2ColOp<DEVICE, T>);                                      \
  REGISTER_KERNEL_BUILDER(                                                 \
      Name("RfcnDeformIm2ColGrad").Device(DEV).TypeConstraint<T>("T"),     \
      RfcnDeformIm2ColGradOp<DEVICE, T>);

RFCN_DEFORM_REGISTER(DEVICE_CPU, CPUDevice, float);
RFCN_DEFORM_REGISTER(DEVICE_CPU, CPUDevice, double);

#if GOOGLE_CUDA
namespace functor {
#define RFCN_DEFORM_DECLARE_GPU(T)                              \
  extern template struct RfcnDeformPoolForward<GPUDevice, T>;   \
  extern template struct RfcnDeformPoolBackward<GPUDevice, T>;  \
  extern template struct RfcnDeformIm2ColForward<GPUDevice, T>; \
  extern template struct RfcnDeformIm2ColBackward<GPUDevice, T>;
RFCN_DEFORM_DECLARE_GPU(float);
RFCN_DEFORM_DECLARE_GPU(double);
#undef RFCN_DEFORM_DECLARE_GPU
}  // namespace functor

RFCN_DEFORM_REGISTER(DEVICE_GPU, GPUDevice, float);
RFCN_DEFORM_REGISTER(DEVICE_GPU, GPUDevice, double);
#endif  // GOOGLE_CUDA
#undef RFCN_DEFORM_REGISTER

}  // namespace tensorflow
