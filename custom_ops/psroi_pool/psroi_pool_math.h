// Position-sensitive RoI pooling: the per-element math, shared by the CPU
// kernels, the CUDA kernels and the standalone CUDA harness.
//
// This header is free of TensorFlow: it needs only <math.h> and <stdint.h>,
// and every function is `__host__ __device__` when nvcc compiles it.
//
// Shape shorthand (docs/ARCHITECTURE.md, "PS-RoI pooling op"):
//   B  images in the batch          H, W    feature-map height, width (cells)
//   kh, kw  bins along y and x      C       classes (output channels)
//   R  RoIs                         K       kh*kw*C, the feature-map channels
//
//   features [B, H, W, K]    NHWC, any float type T (read as float)
//   rois     [R, 5]          float32 rows (batch_index, y1, x1, y2, x2) in
//                            input-image pixels; scaled by spatial_scale
//   output   [R, kh, kw, C]  bin (i, j), class c reads feature channel
//                            (i*kw + j)*C + c (bin-major).
//
// Two modes (R-FCN sec. 2, "Position-sensitive score maps & PS RoI pooling";
// docs/ARCHITECTURE.md gives the arithmetic, repeated here next to the code):
//
//  * kAvg, the paper's pooling. Corners are round(coord * spatial_scale),
//    rounded half away from zero (roundf, as C++ std::round, not the
//    half-to-even of tf.round). roi_h = max(y2r - y1r, 1), same for w. Bin i
//    covers rows [floor(i*roi_h/k), ceil((i+1)*roi_h/k)) offset by y1r and
//    clipped to [0, H] (kh bins; columns: kw bins); the output is the mean
//    over the bin's cells, 0 for an empty bin. Backward: each cell receives
//    grad / area. sampling_ratio is ignored.
//
//  * kBilinear, PSRoIAlign (Light-Head R-CNN, Deformable R-FCN; the rules of
//    torchvision.ops.ps_roi_align). Corners are coord*spatial_scale - 0.5,
//    never rounded (geometry in double); roi_h = y2s - y1s with no minimum
//    (torchvision's ps_roi_align applies none, so a reversed RoI samples
//    backwards); bin size roi_h / kh (roi_w / kw). Each bin averages sy x sx
//    points at sub-bin centres: sy = sx = sampling_ratio when it is > 0, else
//    adaptive, sy = ceil(bin_h), sx = ceil(bin_w) per RoI (torchvision's
//    ceil(roi_height / pooled_height)) clamped to [1, kMaxAdaptiveSamples]
//    (a zero, reversed or NaN bin size takes 1). A point outside
//    [-1, H] x [-1, W] contributes 0 (and still counts in the mean); a
//    coordinate below 0 is set to 0; one at or past the last row (column)
//    reads that row (column) alone.
//
// NaN and infinite coordinates: every range test is written as
// `!(in range)` (or `v >= lo ? ... : lo`) so that a NaN takes the safe branch
// and never reaches an int conversion or an address computation. In avg mode
// a RoI with a non-finite corner pools 0 in every bin; in bilinear mode such
// coordinates fail the in-range test of every sample point: output 0 too.
//
// Accumulation is in float for every T, in a fixed order. The per-element
// functions below are what the CUDA kernels run (one thread per output
// element); the CPU kernels run the same geometry functions but hoist them
// out of their channel loops, tabulate them per RoI, and use the separable
// form of the bilinear weights, so CPU and GPU agree to float rounding
// (~1e-7 relative), not bit for bit.

#ifndef RFCN_TF_CUSTOM_OPS_PSROI_POOL_PSROI_POOL_MATH_H_
#define RFCN_TF_CUSTOM_OPS_PSROI_POOL_PSROI_POOL_MATH_H_

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define RFCN_PSROI_HD __host__ __device__ __forceinline__
#else
#define RFCN_PSROI_HD inline
#endif

namespace rfcn_psroi {

// Pooling mode; the op's string attr maps "avg" -> kAvg, "bilinear" ->
// kBilinear.
enum Mode : int { kAvg = 0, kBilinear = 1 };

// Sizes and attributes of one call. Plain data: passed by value to kernels.
struct Geometry {
  int batch;           // B
  int height;          // H (cells)
  int width;           // W (cells)
  int channels;        // K = kh*kw*C, feature-map channels
  int kh;              // bins along y (pooled height)
  int kw;              // bins along x (pooled width)
  int c_out;           // C, output channels
  float spatial_scale; // feature cells per input pixel (1/16 for stride 16)
  int sampling_ratio;  // bilinear: points per bin side; <= 0: adaptive
  int mode;            // Mode
};

// The largest adaptive sample count per bin side.
constexpr int kMaxAdaptiveSamples = 128;

// Batch index of a RoI row: true and *b = (int)v when 0 <= v < batch (a
// fractional index truncates toward zero); false for anything else, NaN
// included.
RFCN_PSROI_HD bool roi_batch_index(float v, int batch, int* b) {
  if (!(v >= 0.f && v < static_cast<float>(batch))) return false;
  *b = static_cast<int>(v);
  return true;
}

// ---------------------------------------------------------------- avg mode

// True for a finite float (false for NaN and +-inf), written as a range
// test so that it needs no <cmath> overload on either compiler.
RFCN_PSROI_HD bool is_finite(float v) { return fabsf(v) <= 3.402823466e+38f; }

// The rounded RoI along one axis: start = round(c1*scale) (float product,
// rounded half away from zero), length = max(round(c2*scale) - start, 1),
// the difference taken in double so that it cannot overflow. Returns false,
// with an empty extent, when either corner is not finite: such a RoI pools 0
// in every bin (there is no sane rounding of NaN / inf).
RFCN_PSROI_HD bool avg_roi_axis(float c1, float c2, float scale, double* start,
                                double* length) {
  const float r1 = roundf(c1 * scale);
  const float r2 = roundf(c2 * scale);
  if (!(is_finite(r1) && is_finite(r2))) {
    *start = 0.0;
    *length = 0.0;
    return false;
  }
  const double len = static_cast<double>(r2) - static_cast<double>(r1);
  *start = r1;
  *length = (len < 1.0) ? 1.0 : len;
  return true;
}

// Cells [*lo, *hi) of bin `idx` (of k) along one axis of size `limit`:
// [floor(idx*len/k), ceil((idx+1)*len/k)) + start, clipped to [0, limit].
// The bin is empty when *hi <= *lo. Computed in double: idx*len is then an
// exact integer and one correctly rounded division leaves floor/ceil exact
// (the integer arithmetic of the contract) for any RoI up to 2^53 / k cells;
// the clip happens before the int conversion.
RFCN_PSROI_HD void avg_bin_range(double start, double length, int idx, int k,
                                 int limit, int* lo, int* hi) {
  const double dk = static_cast<double>(k);
  const double a = floor(static_cast<double>(idx) * length / dk) + start;
  const double b = ceil(static_cast<double>(idx + 1) * length / dk) + start;
  const double dl = static_cast<double>(limit);
  *lo = static_cast<int>(a >= 0.0 ? (a <= dl ? a : dl) : 0.0);
  *hi = static_cast<int>(b >= 0.0 ? (b <= dl ? b : dl) : 0.0);
}

// Number of cells of a non-empty avg bin, as float (no int overflow).
RFCN_PSROI_HD float bin_area(int h0, int h1, int w0, int w1) {
  return static_cast<float>(h1 - h0) * static_cast<float>(w1 - w0);
}

// ----------------------------------------------------------- bilinear mode

// Number of bilinear sample points of a bin, ny*nx, as float.
RFCN_PSROI_HD float sample_count(int ny, int nx) {
  return static_cast<float>(ny) * static_cast<float>(nx);
}

// Sample points along one axis of a bin of `bin_size` cells: sampling_ratio
// when > 0; adaptive otherwise: ceil(bin_size) clamped to
// [1, kMaxAdaptiveSamples], 1 for a bin size <= 1 or NaN (the comparison is
// written so that NaN takes that branch before any int conversion).
RFCN_PSROI_HD int axis_samples(int sampling_ratio, double bin_size) {
  if (sampling_ratio > 0) return sampling_ratio;
  if (!(bin_size > 1.0)) return 1;
  if (bin_size >= static_cast<double>(kMaxAdaptiveSamples)) {
    return kMaxAdaptiveSamples;
  }
  return static_cast<int>(ceil(bin_size));
}

// Bilinear geometry is evaluated in double: a float32 sample coordinate near
// x = 60 cells carries ~4e-6 of rounding, which the interpolation weights
// would pass on (times the feature magnitude) to the output; in double the
// only float rounding left is that of the final weights and the sums, so the
// op matches the float64 reference to ~1e-7 relative.

// One axis of a bilinear sample: cells lo, hi with weights wlo, whi, or
// valid == false when the point lies outside [-1, size] (or is NaN, or the
// axis is empty). torchvision's bilinear_interpolate rules: v < 0 -> 0;
// lo = (int)v; at or past the last cell lo = hi = size - 1 and v = lo;
// l = v - lo, wlo = 1 - l, whi = l.
struct Tap {
  int lo;
  int hi;
  double wlo;
  double whi;
  bool valid;
};

RFCN_PSROI_HD Tap bilinear_tap(double v, int size) {
  Tap t;
  t.lo = 0;
  t.hi = 0;
  t.wlo = 0.0;
  t.whi = 0.0;
  t.valid = false;
  if (!(size > 0 && v >= -1.0 && v <= static_cast<double>(size))) return t;
  if (v <= 0.0) v = 0.0;
  int lo = static_cast<int>(v);
  int hi;
  if (lo >= size - 1) {
    hi = lo = size - 1;
    v = static_cast<double>(lo);
  } else {
    hi = lo + 1;
  }
  const double l = v - static_cast<double>(lo);
  t.lo = lo;
  t.hi = hi;
  t.wlo = 1.0 - l;
  t.whi = l;
  t.valid = true;
  return t;
}

// The four weights of the point (ty, tx), in the order (lo,lo), (lo,hi),
// (hi,lo), (hi,hi): products in double, rounded once to float.
RFCN_PSROI_HD void bilinear_weights(const Tap& ty, const Tap& tx, float* w1,
                                    float* w2, float* w3, float* w4) {
  *w1 = static_cast<float>(ty.wlo * tx.wlo);
  *w2 = static_cast<float>(ty.wlo * tx.whi);
  *w3 = static_cast<float>(ty.whi * tx.wlo);
  *w4 = static_cast<float>(ty.whi * tx.whi);
}

// The RoI along one axis in bilinear mode: start = c1*scale - 0.5 and the
// bin size (c2*scale - 0.5 - start) / k; no rounding, no minimum size
// (torchvision's ps_roi_align has none: a reversed RoI samples backwards).
RFCN_PSROI_HD void bilinear_roi_axis(float c1, float c2, float scale, int k,
                                     double* start, double* bin_size) {
  const double s1 = static_cast<double>(c1) * scale - 0.5;
  const double s2 = static_cast<double>(c2) * scale - 0.5;
  *start = s1;
  *bin_size = (s2 - s1) / static_cast<double>(k);
}

// Coordinate of sample point `p` (of `n`) inside bin `idx`:
// start + idx*bin + (p + 0.5)*bin/n, evaluated in torchvision's order.
RFCN_PSROI_HD double bilinear_sample_coord(double start, double bin_size,
                                           int idx, int p, int n) {
  const double bin_start = static_cast<double>(idx) * bin_size + start;
  return bin_start +
         (static_cast<double>(p) + 0.5) * bin_size / static_cast<double>(n);
}

// ------------------------------------------------ per-element forward math

// The cells [h0, h1) x [w0, w1) of avg bin (i, j) of `roi` (5 floats);
// empty (h1 <= h0 or w1 <= w0) for a bin outside the map or a RoI with a
// non-finite corner.
RFCN_PSROI_HD void avg_bin_cells(const float* roi, const Geometry& g, int i,
                                 int j, int* h0, int* h1, int* w0, int* w1) {
  double ys, yl, xs, xl;
  const bool fy = avg_roi_axis(roi[1], roi[3], g.spatial_scale, &ys, &yl);
  const bool fx = avg_roi_axis(roi[2], roi[4], g.spatial_scale, &xs, &xl);
  if (!(fy && fx)) {
    *h0 = *h1 = *w0 = *w1 = 0;
    return;
  }
  avg_bin_range(ys, yl, i, g.kh, g.height, h0, h1);
  avg_bin_range(xs, xl, j, g.kw, g.width, w0, w1);
}

// Flat NHWC offset of cell (b, h, w), channel 0.
RFCN_PSROI_HD int64_t cell_offset(const Geometry& g, int b, int h, int w) {
  return ((static_cast<int64_t>(b) * g.height + h) * g.width + w) *
         static_cast<int64_t>(g.channels);
}

// Output element (r, i, j, c): `features` is the whole [B, H, W, K] map,
// `roi` points at row r of rois (5 floats). A RoI whose batch index is out
// of range yields 0 (the TF op rejects it before any kernel runs on CPU).
template <typename T>
RFCN_PSROI_HD float forward_element(const T* features, const float* roi,
                                    const Geometry& g, int i, int j, int c) {
  int b;
  if (!roi_batch_index(roi[0], g.batch, &b)) return 0.f;
  const int channel = (i * g.kw + j) * g.c_out + c;
  if (g.mode == kAvg) {
    int h0, h1, w0, w1;
    avg_bin_cells(roi, g, i, j, &h0, &h1, &w0, &w1);
    if (h1 <= h0 || w1 <= w0) return 0.f;
    float sum = 0.f;
    for (int h = h0; h < h1; ++h) {
      for (int w = w0; w < w1; ++w) {
        sum += static_cast<float>(features[cell_offset(g, b, h, w) + channel]);
      }
    }
    return sum / bin_area(h0, h1, w0, w1);
  }
  // kBilinear
  double ys, ybin, xs, xbin;
  bilinear_roi_axis(roi[1], roi[3], g.spatial_scale, g.kh, &ys, &ybin);
  bilinear_roi_axis(roi[2], roi[4], g.spatial_scale, g.kw, &xs, &xbin);
  const int ny = axis_samples(g.sampling_ratio, ybin);
  const int nx = axis_samples(g.sampling_ratio, xbin);
  float sum = 0.f;
  for (int py = 0; py < ny; ++py) {
    const Tap ty = bilinear_tap(bilinear_sample_coord(ys, ybin, i, py, ny),
                                g.height);
    for (int px = 0; px < nx; ++px) {
      const Tap tx = bilinear_tap(bilinear_sample_coord(xs, xbin, j, px, nx),
                                  g.width);
      if (!(ty.valid && tx.valid)) continue;  // contributes 0
      const float v1 = static_cast<float>(
          features[cell_offset(g, b, ty.lo, tx.lo) + channel]);
      const float v2 = static_cast<float>(
          features[cell_offset(g, b, ty.lo, tx.hi) + channel]);
      const float v3 = static_cast<float>(
          features[cell_offset(g, b, ty.hi, tx.lo) + channel]);
      const float v4 = static_cast<float>(
          features[cell_offset(g, b, ty.hi, tx.hi) + channel]);
      float w1, w2, w3, w4;
      bilinear_weights(ty, tx, &w1, &w2, &w3, &w4);
      sum += w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4;
    }
  }
  return sum / sample_count(ny, nx);
}

// ----------------------------------------------- per-element backward math

// Scatters the gradient `grad` of output element (r, i, j, c) into the
// feature gradient through `add(flat_nhwc_index, value)`: each cell of an avg
// bin gets grad / area; each bilinear tap gets grad * weight / (ny*nx).
// `Add` is any callable; the CUDA kernels pass an atomic adder.
template <typename Add>
RFCN_PSROI_HD void backward_element(const float* roi, const Geometry& g,
                                    int i, int j, int c, float grad,
                                    Add& add) {
  int b;
  if (!roi_batch_index(roi[0], g.batch, &b)) return;
  const int channel = (i * g.kw + j) * g.c_out + c;
  if (g.mode == kAvg) {
    int h0, h1, w0, w1;
    avg_bin_cells(roi, g, i, j, &h0, &h1, &w0, &w1);
    if (h1 <= h0 || w1 <= w0) return;
    const float gv = grad / bin_area(h0, h1, w0, w1);
    for (int h = h0; h < h1; ++h) {
      for (int w = w0; w < w1; ++w) {
        add(cell_offset(g, b, h, w) + channel, gv);
      }
    }
    return;
  }
  double ys, ybin, xs, xbin;
  bilinear_roi_axis(roi[1], roi[3], g.spatial_scale, g.kh, &ys, &ybin);
  bilinear_roi_axis(roi[2], roi[4], g.spatial_scale, g.kw, &xs, &xbin);
  const int ny = axis_samples(g.sampling_ratio, ybin);
  const int nx = axis_samples(g.sampling_ratio, xbin);
  const float gv = grad / sample_count(ny, nx);
  for (int py = 0; py < ny; ++py) {
    const Tap ty = bilinear_tap(bilinear_sample_coord(ys, ybin, i, py, ny),
                                g.height);
    for (int px = 0; px < nx; ++px) {
      const Tap tx = bilinear_tap(bilinear_sample_coord(xs, xbin, j, px, nx),
                                  g.width);
      if (!(ty.valid && tx.valid)) continue;
      float w1, w2, w3, w4;
      bilinear_weights(ty, tx, &w1, &w2, &w3, &w4);
      add(cell_offset(g, b, ty.lo, tx.lo) + channel, gv * w1);
      add(cell_offset(g, b, ty.lo, tx.hi) + channel, gv * w2);
      add(cell_offset(g, b, ty.hi, tx.lo) + channel, gv * w3);
      add(cell_offset(g, b, ty.hi, tx.hi) + channel, gv * w4);
    }
  }
}

}  // namespace rfcn_psroi

#endif  // RFCN_TF_CUSTOM_OPS_PSROI_POOL_PSROI_POOL_MATH_H_
