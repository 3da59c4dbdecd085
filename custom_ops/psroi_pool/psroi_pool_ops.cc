// Op definitions of position-sensitive RoI pooling: RfcnPsRoiPool and its
// gradient RfcnPsRoiPoolGrad, with shape functions built from
// DimensionHandles (unknown R, H, W inside tf.function stay unknown).
//
// Contract: docs/ARCHITECTURE.md, "PS-RoI pooling op"; the arithmetic is in
// psroi_pool_math.h.

#include <cmath>
#include <string>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tensorflow {
namespace {

using shape_inference::DimensionHandle;
using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

// Checks the attrs that the attr constraints of REGISTER_OP do not cover.
absl::Status CheckScale(InferenceContext* c) {
  float spatial_scale;
  TF_RETURN_IF_ERROR(c->GetAttr("spatial_scale", &spatial_scale));
  if (!(std::isfinite(spatial_scale) && spatial_scale > 0.f)) {
    return errors::InvalidArgument(
        "RfcnPsRoiPool: spatial_scale must be a finite number > 0, got ",
        spatial_scale);
  }
  return absl::OkStatus();
}

// features [B, H, W, kh*kw*C]: checks rank 4 and, when the channel count is
// known, that kh*kw divides it; *c_out receives C (possibly unknown).
absl::Status FeaturesShape(InferenceContext* c, int input, int kh, int kw,
                           ShapeHandle* features, DimensionHandle* c_out) {
  ShapeHandle in = c->input(input);
  if (InferenceContext::RankKnown(in) && InferenceContext::Rank(in) != 4) {
    return errors::InvalidArgument(
        "RfcnPsRoiPool: features must be rank 4 [B, H, W, kh*kw*C], got shape ",
        c->DebugString(in));
  }
  TF_RETURN_IF_ERROR(c->WithRank(in, 4, features));
  for (int d = 1; d <= 2; ++d) {
    DimensionHandle dim = c->Dim(*features, d);
    if (c->ValueKnown(dim) && c->Value(dim) < 1) {
      return errors::InvalidArgument(
          "RfcnPsRoiPool: features height and width must be >= 1, got shape ",
          c->DebugString(in));
    }
  }
  DimensionHandle channels = c->Dim(*features, 3);
  if (c->ValueKnown(channels) && c->Value(channels) % (kh * kw) != 0) {
    return errors::InvalidArgument(
        "RfcnPsRoiPool: features channels (", c->Value(channels),
        ") must be divisible by pooled_height*pooled_width = ", kh, "*", kw,
        " = ", kh * kw, " (the bin-major layout kh*kw*C)");
  }
  return c->Divide(channels, kh * kw, /*evenly_divisible=*/true, c_out);
}

// rois [R, 5]: checks rank 2 and width 5.
absl::Status RoisShape(InferenceContext* c, int input, ShapeHandle* rois) {
  ShapeHandle in = c->input(input);
  const bool bad_rank =
      InferenceContext::RankKnown(in) && InferenceContext::Rank(in) != 2;
  const bool bad_width = !bad_rank && InferenceContext::RankKnown(in) &&
                         c->ValueKnown(c->Dim(in, 1)) &&
                         c->Value(c->Dim(in, 1)) != 5;
  if (bad_rank || bad_width) {
    return errors::InvalidArgument(
        "RfcnPsRoiPool: rois must be [R, 5] rows (batch_index, y1, x1, y2, "
        "x2), got shape ",
        c->DebugString(in));
  }
  TF_RETURN_IF_ERROR(c->WithRank(in, 2, rois));
  DimensionHandle unused;
  return c->WithValue(c->Dim(*rois, 1), 5, &unused);
}

absl::Status GridAttrs(InferenceContext* c, int* kh, int* kw) {
  TF_RETURN_IF_ERROR(c->GetAttr("pooled_height", kh));
  return c->GetAttr("pooled_width", kw);
}

absl::Status PsRoiPoolShape(InferenceContext* c) {
  int kh, kw;
  TF_RETURN_IF_ERROR(GridAttrs(c, &kh, &kw));
  TF_RETURN_IF_ERROR(CheckScale(c));
  ShapeHandle features, rois;
  DimensionHandle c_out;
  TF_RETURN_IF_ERROR(FeaturesShape(c, 0, kh, kw, &features, &c_out));
  TF_RETURN_IF_ERROR(RoisShape(c, 1, &rois));
  c->set_output(0, c->MakeShape({c->Dim(rois, 0), c->MakeDim(kh),
                                 c->MakeDim(kw), c_out}));
  return absl::OkStatus();
}

absl::Status PsRoiPoolGradShape(InferenceContext* c) {
  int kh, kw;
  TF_RETURN_IF_ERROR(GridAttrs(c, &kh, &kw));
  TF_RETURN_IF_ERROR(CheckScale(c));
  ShapeHandle features, rois, grad;
  DimensionHandle c_out;
  TF_RETURN_IF_ERROR(FeaturesShape(c, 0, kh, kw, &features, &c_out));
  TF_RETURN_IF_ERROR(RoisShape(c, 1, &rois));
  // grad must be [R, kh, kw, C], consistent with rois and features.
  ShapeHandle expected = c->MakeShape(
      {c->Dim(rois, 0), c->MakeDim(kh), c->MakeDim(kw), c_out});
  if (!c->Merge(c->input(2), expected, &grad).ok()) {
    return errors::InvalidArgument(
        "RfcnPsRoiPoolGrad: grad must be [R, kh, kw, C] = ",
        c->DebugString(expected), ", got shape ",
        c->DebugString(c->input(2)));
  }
  c->set_output(0, features);
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("RfcnPsRoiPool")
    .Input("features: T")
    .Input("rois: float")
    .Output("output: T")
    .Attr("pooled_height: int >= 1 = 7")
    .Attr("pooled_width: int >= 1 = 7")
    .Attr("spatial_scale: float = 0.0625")
    .Attr("mode: {'avg', 'bilinear'} = 'avg'")
    .Attr("sampling_ratio: int = 2")
    .Attr("T: {float, half, bfloat16} = DT_FLOAT")
    .SetShapeFn(PsRoiPoolShape)
    .Doc(R"doc(
Position-sensitive RoI pooling (R-FCN, Dai et al. NIPS 2016, sec. 2).

Bin (i, j) of RoI r, class c pools feature channel (i*kw + j)*C + c over the
bin's part of the RoI (bin-major layout; kh = pooled_height, kw =
pooled_width). mode "avg" is the paper's average pooling over rounded integer
bins; mode "bilinear" is PSRoIAlign (bilinear points per bin, the border
rules of torchvision.ops.ps_roi_align). Voting is not done here.

features: [B, H, W, kh*kw*C] NHWC feature map.
rois: [R, 5] float32 rows (batch_index, y1, x1, y2, x2) in input-image
  pixels; batch_index must lie in [0, B).
output: [R, kh, kw, C].
pooled_height: kh, the number of bins along y.
pooled_width: kw, the number of bins along x.
spatial_scale: feature cells per input pixel (1/16 for a stride-16 map).
mode: "avg" or "bilinear".
sampling_ratio: bilinear sample points per bin side; <= 0: adaptive,
  ceil(bin size in cells) per RoI and axis, clamped to [1, 128] (torchvision's
  rule). Ignored by "avg".
)doc");

REGISTER_OP("RfcnPsRoiPoolGrad")
    .Input("features: T")
    .Input("rois: float")
    .Input("grad: T")
    .Output("grad_features: T")
    .Attr("pooled_height: int >= 1 = 7")
    .Attr("pooled_width: int >= 1 = 7")
    .Attr("spatial_scale: float = 0.0625")
    .Attr("mode: {'avg', 'bilinear'} = 'avg'")
    .Attr("sampling_ratio: int = 2")
    .Attr("T: {float, half, bfloat16} = DT_FLOAT")
    .SetShapeFn(PsRoiPoolGradShape)
    .Doc(R"doc(
Gradient of RfcnPsRoiPool with respect to features (R-FCN sec. 2).

Each avg-bin cell receives grad / area; each bilinear tap receives
grad * weight / (points in the bin). There is no gradient for rois.

features: [B, H, W, kh*kw*C], the forward input (only its shape is read).
rois: [R, 5] float32, the forward rois.
grad: [R, kh, kw, C], the gradient of the forward output.
grad_features: [B, H, W, kh*kw*C].
)doc");

}  // namespace tensorflow
