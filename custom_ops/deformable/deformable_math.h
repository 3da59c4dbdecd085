// Deformable PS-RoI pooling and deformable convolution: the per-element
// math, shared by the CPU kernels, the CUDA kernels and the standalone CUDA
// harness. Free of TensorFlow (<math.h>, <stdint.h> only); every function is
// `__host__ __device__` under nvcc.
//
// ---------------------------------------------- deformable PS-RoI pooling
// Deformable ConvNets (Dai et al., ICCV 2017) sec. 2.2. Shapes:
//   features [B, H, W, k*k*C]   NHWC, bin-major: bin (i, j), class c reads
//                               channel (i*k + j)*C + c
//   rois     [R, 5]             float32 (batch_index, y1, x1, y2, x2), pixels
//   offsets  [R, k, k, 2*G]     normalized (dy, dx) per bin and offset group:
//                               channels (2g, 2g+1) = (dy, dx) of group g;
//                               class c uses group g = c / (C / G) (G = 1:
//                               class-agnostic, the paper's default; G = C:
//                               one offset per class)
//   output   [R, k, k, C]
// The rules are those of ps_roi_pool's bilinear mode (PSRoIAlign,
// torchvision.ops.ps_roi_align; psroi_pool_math.h), with the bin shifted:
//   y1s = y1*scale - 0.5, y2s = y2*scale - 0.5 (no rounding, no minimum),
//   roi_h = y2s - y1s, bin_h = roi_h / k,
//   bin start y = y1s + i*bin_h + dy * trans_std * roi_h,
//   sample p at start + (p + 0.5) * bin_h / n, n = sampling_ratio;
//   a point outside [-1, H] (or NaN) contributes 0 and still counts in the
//   mean; v < 0 reads row 0; at or past row H-1 it reads row H-1 alone;
//   output = sum of the n*n points / (n*n). Same for x with dx and roi_w.
// With zero offsets this is the bilinear mode of ps_roi_pool exactly (the
// shift adds 0.0 to the same double). Differences from the MXNet reference
// (Deformable-ConvNets deformable_psroi_pooling): no rounding of RoI corners
// and no 0.1 minimum size, samples at sub-bin centres (not sub-bin starts),
// the mean over all n*n points (not over valid ones), the offset pair stored
// (dy, dx) (not (dx, dy)), and the offsets come in per bin [R, k, k, 2G]
// (part_size = k).
// Gradients: features get grad * weight / (n*n) per tap; the offsets get
//   d out / d dy = trans_std * roi_h * (1/(n*n)) * sum_points dv/dy,
// with dv/dy = sum_x-corners wx * (f(hi) - f(lo)) where the row is neither
// clamped (v <= 0, at the last row) nor out of range, else 0.
//
// ------------------------------------------------- deformable convolution
// DCN v1 (Dai et al. 2017) and modulated DCN v2 (Zhu et al., CVPR 2019):
//   input   [B, H, W, Cin]          NHWC
//   offsets [B, Ho, Wo, 2*kh*kw]    channels (2t, 2t+1) = (dy, dx) of tap
//                                   t = ki*kw + kj (torchvision's order)
//   mask    [B, Ho, Wo, kh*kw]      modulation per tap (1 for DCN v1)
//   columns [B, Ho, Wo, kh*kw*Cin]  column t*Cin + c = mask * sample, so
//                                   columns @ filters.reshape(kh*kw*Cin,
//                                   Cout) is the deformable convolution
// Tap t of output (ho, wo) samples y = ho*sh - pad_top + ki*dh + dy,
// x = wo*sw - pad_left + kj*dw + dx, bilinearly with zero padding: the four
// corners floor(y) + {0,1}, floor(x) + {0,1} are read where they lie inside
// the map and count 0 outside (DCN / torchvision deform_conv2d). With zero
// offsets and mask 1, y and x are integers and the columns are those of a
// plain convolution (the weights are exactly 1, 0, 0, 0).
//
// Accumulation is in T (float or double), in a fixed order on CPU; the
// geometry (positions, weights) is evaluated in double.

#ifndef RFCN_TF_CUSTOM_OPS_DEFORMABLE_DEFORMABLE_MATH_H_
#define RFCN_TF_CUSTOM_OPS_DEFORMABLE_DEFORMABLE_MATH_H_

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define RFCN_DEFORM_HD __host__ __device__ __forceinline__
#else
#define RFCN_DEFORM_HD inline
#endif

namespace rfcn_deform {

// ============================================= deformable PS-RoI pooling

struct PoolGeometry {
  int batch;            // B
  int height;           // H
  int width;            // W
  int channels;         // k*k*C
  int k;                // output_size
  int c_out;            // C
  int groups;           // G, offset groups (C % G == 0)
  float spatial_scale;  // cells per input pixel
  int sampling_ratio;   // n >= 1
  float trans_std;      // offset scale (gamma = 0.1 in the paper)
};

// 0 <= v < batch (NaN false); *b = (int)v.
RFCN_DEFORM_HD bool roi_batch_index(float v, int batch, int* b) {
  if (!(v >= 0.f && v < static_cast<float>(batch))) return false;
  *b = static_cast<int>(v);
  return true;
}

// One axis of a PSRoIAlign sample (ps_roi_pool's bilinear rules): cells lo,
// hi, weights wlo, whi; gate = d(weight position)/d(coordinate): 1 where the
// coordinate moves the weights, 0 where it is clamped (v <= 0, at or past
// the last cell) or the point is invalid.
struct Tap {
  int lo;
  int hi;
  double wlo;
  double whi;
  double gate;
  bool valid;
};

RFCN_DEFORM_HD Tap pool_tap(double v, int size) {
  Tap t;
  t.lo = 0;
  t.hi = 0;
  t.wlo = 0.0;
  t.whi = 0.0;
  t.gate = 0.0;
  t.valid = false;
  if (!(size > 0 && v >= -1.0 && v <= static_cast<double>(size))) return t;
  double gate = 1.0;
  if (v <= 0.0) {
    v = 0.0;
    gate = 0.0;
  }
  int lo = static_cast<int>(v);
  int hi;
  if (lo >= size - 1) {
    hi = lo = size - 1;
    v = static_cast<double>(lo);
    gate = 0.0;
  } else {
    hi = lo + 1;
  }
  const double l = v - static_cast<double>(lo);
  t.lo = lo;
  t.hi = hi;
  t.wlo = 1.0 - l;
  t.whi = l;
  t.gate = gate;
  t.valid = true;
  return t;
}

// The RoI along one axis: start = c1*scale - 0.5, extent = c2*scale - 0.5 -
// start (no minimum), bin size extent / k (ps_roi_pool's bilinear mode).
RFCN_DEFORM_HD void pool_roi_axis(float c1, float c2, float scale, int k,
                                  double* start, double* extent,
                                  double* bin_size) {
  const double s1 = static_cast<double>(c1) * scale - 0.5;
  const double s2 = static_cast<double>(c2) * scale - 0.5;
  *start = s1;
  *extent = s2 - s1;
  *bin_size = (s2 - s1) / static_cast<double>(k);
}

// Start of bin `idx` shifted by the normalized offset `d`:
// idx*bin + start + d*trans_std*extent (d = 0 adds exactly 0.0).
RFCN_DEFORM_HD double pool_bin_start(double start, double extent,
                                     double bin_size, int idx, double d,
                                     float trans_std) {
  return (static_cast<double>(idx) * bin_size + start) +
         d * static_cast<double>(trans_std) * extent;
}

// Sample p of n inside a bin starting at bin_start.
RFCN_DEFORM_HD double pool_sample(double bin_start, double bin_size, int p,
                                  int n) {
  return bin_start +
         (static_cast<double>(p) + 0.5) * bin_size / static_cast<double>(n);
}

RFCN_DEFORM_HD int64_t pool_cell(const PoolGeometry& g, int b, int h, int w) {
  return ((static_cast<int64_t>(b) * g.height + h) * g.width + w) *
         static_cast<int64_t>(g.channels);
}

// Flat index of offset (r, i, j, group, axis) in [R, k, k, 2G].
RFCN_DEFORM_HD int64_t pool_offset_index(const PoolGeometry& g, int64_t r,
                                         int i, int j, int group, int axis) {
  return ((r * g.k + i) * g.k + j) * (2 * g.groups) + 2 * group + axis;
}

// Output element (r, i, j, c) (CUDA kernels, host driver). `roi` = row r.
template <typename T>
RFCN_DEFORM_HD T pool_forward_element(const T* features, const float* roi,
                                      const T* offsets, const PoolGeometry& g,
                                      int64_t r, int i, int j, int c) {
  int b;
  if (!roi_batch_index(roi[0], g.batch, &b)) return T(0);
  const int group = c / (g.c_out / g.groups);
  const int channel = (i * g.k + j) * g.c_out + c;
  double ys, yext, ybin, xs, xext, xbin;
  pool_roi_axis(roi[1], roi[3], g.spatial_scale, g.k, &ys, &yext, &ybin);
  pool_roi_axis(roi[2], roi[4], g.spatial_scale, g.k, &xs, &xext, &xbin);
  const double dy = static_cast<double>(
      offsets[pool_offset_index(g, r, i, j, group, 0)]);
  const double dx = static_cast<double>(
      offsets[pool_offset_index(g, r, i, j, group, 1)]);
  const double y0 = pool_bin_start(ys, yext, ybin, i, dy, g.trans_std);
  const double x0 = pool_bin_start(xs, xext, xbin, j, dx, g.trans_std);
  const int n = g.sampling_ratio;
  T sum = T(0);
  for (int py = 0; py < n; ++py) {
    const Tap ty = pool_tap(pool_sample(y0, ybin, py, n), g.height);
    for (int px = 0; px < n; ++px) {
      const Tap tx = pool_tap(pool_sample(x0, xbin, px, n), g.width);
      if (!(ty.valid && tx.valid)) continue;
      const T v1 = features[pool_cell(g, b, ty.lo, tx.lo) + channel];
      const T v2 = features[pool_cell(g, b, ty.lo, tx.hi) + channel];
      const T v3 = features[pool_cell(g, b, ty.hi, tx.lo) + channel];
      const T v4 = features[pool_cell(g, b, ty.hi, tx.hi) + channel];
      sum += static_cast<T>(ty.wlo * tx.wlo) * v1 +
             static_cast<T>(ty.wlo * tx.whi) * v2 +
             static_cast<T>(ty.whi * tx.wlo) * v3 +
             static_cast<T>(ty.whi * tx.whi) * v4;
    }
  }
  return sum / static_cast<T>(n * n);
}

// Backward of output element (r, i, j, c) with output gradient `grad`:
// add_f(flat feature index, value) receives the feature taps,
// add_o(flat offset index, value) the two offset gradients.
template <typename T, typename AddF, typename AddO>
RFCN_DEFORM_HD void pool_backward_element(const T* features, const float* roi,
                                          const T* offsets,
                                          const PoolGeometry& g, int64_t r,
                                          int i, int j, int c, T grad,
                                          AddF& add_f, AddO& add_o) {
  int b;
  if (!roi_batch_index(roi[0], g.batch, &b)) return;
  const int group = c / (g.c_out / g.groups);
  const int channel = (i * g.k + j) * g.c_out + c;
  double ys, yext, ybin, xs, xext, xbin;
  pool_roi_axis(roi[1], roi[3], g.spatial_scale, g.k, &ys, &yext, &ybin);
  pool_roi_axis(roi[2], roi[4], g.spatial_scale, g.k, &xs, &xext, &xbin);
  const int64_t oy = pool_offset_index(g, r, i, j, group, 0);
  const double dy = static_cast<double>(offsets[oy]);
  const double dx = static_cast<double>(offsets[oy + 1]);
  const double y0 = pool_bin_start(ys, yext, ybin, i, dy, g.trans_std);
  const double x0 = pool_bin_start(xs, xext, xbin, j, dx, g.trans_std);
  const int n = g.sampling_ratio;
  const T gv = grad / static_cast<T>(n * n);
  T gy = T(0), gx = T(0);
  for (int py = 0; py < n; ++py) {
    const Tap ty = pool_tap(pool_sample(y0, ybin, py, n), g.height);
    for (int px = 0; px < n; ++px) {
      const Tap tx = pool_tap(pool_sample(x0, xbin, px, n), g.width);
      if (!(ty.valid && tx.valid)) continue;
      const int64_t c1 = pool_cell(g, b, ty.lo, tx.lo) + channel;
      const int64_t c2 = pool_cell(g, b, ty.lo, tx.hi) + channel;
      const int64_t c3 = pool_cell(g, b, ty.hi, tx.lo) + channel;
      const int64_t c4 = pool_cell(g, b, ty.hi, tx.hi) + channel;
      add_f(c1, gv * static_cast<T>(ty.wlo * tx.wlo));
      add_f(c2, gv * static_cast<T>(ty.wlo * tx.whi));
      add_f(c3, gv * static_cast<T>(ty.whi * tx.wlo));
      add_f(c4, gv * static_cast<T>(ty.whi * tx.whi));
      const T v1 = features[c1], v2 = features[c2];
      const T v3 = features[c3], v4 = features[c4];
      gy += static_cast<T>(ty.gate) *
            (static_cast<T>(tx.wlo) * (v3 - v1) +
             static_cast<T>(tx.whi) * (v4 - v2));
      gx += static_cast<T>(tx.gate) *
            (static_cast<T>(ty.wlo) * (v2 - v1) +
             static_cast<T>(ty.whi) * (v4 - v3));
    }
  }
  add_o(oy, gv * gy * static_cast<T>(g.trans_std * yext));
  add_o(oy + 1, gv * gx * static_cast<T>(g.trans_std * xext));
}

// ================================================= deformable convolution

enum Padding : int { kValid = 0, kSame = 1, kExplicit = 2 };

struct ConvGeometry {
  int batch;     // B
  int height;    // H
  int width;     // W
  int channels;  // Cin
  int kh;        // kernel rows
  int kw;        // kernel columns
  int stride_h;
  int stride_w;
  int dil_h;
  int dil_w;
  int pad_top;
  int pad_left;
  int out_h;     // Ho
  int out_w;     // Wo
};

// Output size and leading pad of one axis (tf.nn.conv2d's rules): VALID
// out = ceil((size - (k-1)*d) / s), SAME out = ceil(size / s) with
// pad_before = max((out-1)*s + (k-1)*d + 1 - size, 0) / 2, EXPLICIT
// out = (size + before + after - (k-1)*d - 1) / s + 1. out may be <= 0
// (the op rejects it).
RFCN_DEFORM_HD void conv_axis(int padding, int size, int k, int s, int d,
                              int before, int after, int* out, int* pad) {
  const int span = (k - 1) * d + 1;
  if (padding == kSame) {
    *out = (size + s - 1) / s;
    const int total = (*out - 1) * s + span - size;
    *pad = total > 0 ? total / 2 : 0;
  } else if (padding == kValid) {
    *out = size >= span ? (size - span) / s + 1 : 0;
    *pad = 0;
  } else {
    const int padded = size + before + after;
    *out = padded >= span ? (padded - span) / s + 1 : 0;
    *pad = before;
  }
}

// The four zero-padded bilinear corners of a sample (y, x): flat cell
// indices (b, h, w) * Cin (0 for an outside corner), weights w and their
// derivatives wy = dw/dy, wx = dw/dx (0 for an outside corner). Order:
// (lo, lo), (lo, hi), (hi, lo), (hi, hi).
struct Corners {
  int64_t cell[4];
  double w[4];
  double wy[4];
  double wx[4];
};

RFCN_DEFORM_HD void conv_corners(double y, double x, const ConvGeometry& g,
                                 int b, Corners* q) {
  for (int t = 0; t < 4; ++t) {
    q->cell[t] = 0;
    q->w[t] = q->wy[t] = q->wx[t] = 0.0;
  }
  if (!(y > -1.0 && y < static_cast<double>(g.height) && x > -1.0 &&
        x < static_cast<double>(g.width))) {
    return;  // no corner inside (and NaN)
  }
  const double fy = floor(y), fx = floor(x);
  const int y0 = static_cast<int>(fy), x0 = static_cast<int>(fx);
  const double ly = y - fy, lx = x - fx, hy = 1.0 - ly, hx = 1.0 - lx;
  const double w[4] = {hy * hx, hy * lx, ly * hx, ly * lx};
  const double wy[4] = {-hx, -lx, hx, lx};
  const double wx[4] = {-hy, hy, -ly, ly};
  for (int t = 0; t < 4; ++t) {
    const int h = y0 + (t >> 1), c = x0 + (t & 1);
    if (h < 0 || h >= g.height || c < 0 || c >= g.width) continue;
    q->cell[t] = ((static_cast<int64_t>(b) * g.height + h) * g.width + c) *
                 static_cast<int64_t>(g.channels);
    q->w[t] = w[t];
    q->wy[t] = wy[t];
    q->wx[t] = wx[t];
  }
}

// The sample position of tap (ki, kj) of output (b, ho, wo); `off` points
// at offsets[b, ho, wo, :] (2*kh*kw values).
template <typename T>
RFCN_DEFORM_HD void conv_position(const ConvGeometry& g, const T* off,
                                  int ho, int wo, int ki, int kj, double* y,
                                  double* x) {
  const int t = ki * g.kw + kj;
  *y = static_cast<double>(ho * g.stride_h - g.pad_top + ki * g.dil_h) +
       static_cast<double>(off[2 * t]);
  *x = static_cast<double>(wo * g.stride_w - g.pad_left + kj * g.dil_w) +
       static_cast<double>(off[2 * t + 1]);
}

// Flat index of output pixel (b, ho, wo).
RFCN_DEFORM_HD int64_t conv_pixel(const ConvGeometry& g, int b, int ho,
                                  int wo) {
  return (static_cast<int64_t>(b) * g.out_h + ho) * g.out_w + wo;
}

// Column element (pixel, tap t, channel c) = mask * bilinear sample
// (CUDA kernels, host driver).
template <typename T>
RFCN_DEFORM_HD T conv_column_element(const T* input, const T* offsets,
                                     const T* mask, const ConvGeometry& g,
                                     int b, int ho, int wo, int t, int c) {
  const int64_t pix = conv_pixel(g, b, ho, wo);
  const int taps = g.kh * g.kw;
  double y, x;
  conv_position(g, offsets + pix * 2 * taps, ho, wo, t / g.kw, t % g.kw, &y,
                &x);
  Corners q;
  conv_corners(y, x, g, b, &q);
  T v = T(0);
  for (int s = 0; s < 4; ++s) {
    if (q.w[s] != 0.0) v += static_cast<T>(q.w[s]) * input[q.cell[s] + c];
  }
  return mask[pix * taps + t] * v;
}

// Offset and mask gradients of tap t of pixel (b, ho, wo), summed over the
// Cin channels of the column gradient `gcol` (= grad_columns[pix, t, :]):
// *g_dy, *g_dx, *g_mask.
template <typename T>
RFCN_DEFORM_HD void conv_offset_grad(const T* input, const T* offsets,
                                     const T* mask, const T* gcol,
                                     const ConvGeometry& g, int b, int ho,
                                     int wo, int t, T* g_dy, T* g_dx,
                                     T* g_mask) {
  const int64_t pix = conv_pixel(g, b, ho, wo);
  const int taps = g.kh * g.kw;
  double y, x;
  conv_position(g, offsets + pix * 2 * taps, ho, wo, t / g.kw, t % g.kw, &y,
                &x);
  Corners q;
  conv_corners(y, x, g, b, &q);
  T sv = T(0), sy = T(0), sx = T(0);
  for (int s = 0; s < 4; ++s) {
    if (q.w[s] == 0.0 && q.wy[s] == 0.0 && q.wx[s] == 0.0) continue;
    const T w = static_cast<T>(q.w[s]), wy = static_cast<T>(q.wy[s]),
            wx = static_cast<T>(q.wx[s]);
    const T* f = input + q.cell[s];
    T dot = T(0);
    for (int c = 0; c < g.channels; ++c) dot += gcol[c] * f[c];
    sv += w * dot;
    sy += wy * dot;
    sx += wx * dot;
  }
  const T m = mask[pix * taps + t];
  *g_mask = sv;
  *g_dy = m * sy;
  *g_dx = m * sx;
}

}  // namespace rfcn_deform

#endif  // RFCN_TF_CUSTOM_OPS_DEFORMABLE_DEFORMABLE_MATH_H_
