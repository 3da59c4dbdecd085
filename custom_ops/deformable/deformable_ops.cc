// Op definitions of the deformable ops (Deformable ConvNets, Dai et al.
// ICCV 2017; modulated DCN v2, Zhu et al. CVPR 2019):
//   RfcnDeformPsRoiPool / RfcnDeformPsRoiPoolGrad  deformable PS-RoI pooling
//   RfcnDeformIm2Col / RfcnDeformIm2ColGrad        deformable im2col (the
//     deformable convolution is these columns times the reshaped filters, a
//     stock MatMul: rfcn_tf/ops/deform_conv.py)
// Shape functions work on DimensionHandles (unknown R, B, H, W stay
// unknown). Arithmetic and layouts: deformable_math.h.

#include <cmath>
#include <string>
#include <vector>

#include "deformable_math.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tensorflow {
namespace {

using shape_inference::DimensionHandle;
using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

absl::Status PoolAttrs(InferenceContext* c, int* k, int* groups) {
  TF_RETURN_IF_ERROR(c->GetAttr("output_size", k));
  TF_RETURN_IF_ERROR(c->GetAttr("offset_groups", groups));
  float scale, trans_std;
  TF_RETURN_IF_ERROR(c->GetAttr("spatial_scale", &scale));
  TF_RETURN_IF_ERROR(c->GetAttr("trans_std", &trans_std));
  if (!(std::isfinite(scale) && scale > 0.f)) {
    return errors::InvalidArgument(
        "RfcnDeformPsRoiPool: spatial_scale must be a finite number > 0, got ",
        scale);
  }
  if (!std::isfinite(trans_std)) {
    return errors::InvalidArgument(
        "RfcnDeformPsRoiPool: trans_std must be finite, got ", trans_std);
  }
  return absl::OkStatus();
}

// features [B, H, W, k*k*C], rois [R, 5], offsets [R, k, k, 2G]:
// *out = [R, k, k, C].
absl::Status PoolShapes(InferenceContext* c, ShapeHandle* out) {
  int k, groups;
  TF_RETURN_IF_ERROR(PoolAttrs(c, &k, &groups));
  ShapeHandle features, rois, offsets;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &features));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &rois));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 4, &offsets));
  DimensionHandle unused, c_out, channels = c->Dim(features, 3);
  if (c->ValueKnown(channels) && c->Value(channels) % (k * k * groups) != 0) {
    return errors::InvalidArgument(
        "RfcnDeformPsRoiPool: features channels (", c->Value(channels),
        ") must be divisible by output_size^2 * offset_groups = ", k * k,
        " * ", groups, " (bin-major k*k*C, C a multiple of offset_groups)");
  }
  TF_RETURN_IF_ERROR(c->Divide(channels, k * k, true, &c_out));
  if (!c->WithValue(c->Dim(rois, 1), 5, &unused).ok()) {
    return errors::InvalidArgument(
        "RfcnDeformPsRoiPool: rois must be [R, 5] rows (batch_index, y1, x1, "
        "y2, x2), got shape ", c->DebugString(rois));
  }
  DimensionHandle r = c->Dim(rois, 0);
  ShapeHandle expected = c->MakeShape(
      {r, c->MakeDim(k), c->MakeDim(k), c->MakeDim(2 * groups)});
  ShapeHandle merged;
  if (!c->Merge(offsets, expected, &merged).ok()) {
    return errors::InvalidArgument(
        "RfcnDeformPsRoiPool: offsets must be [R, k, k, 2*offset_groups] = ",
        c->DebugString(expected), ", got shape ", c->DebugString(offsets));
  }
  *out = c->MakeShape({c->Dim(merged, 0), c->MakeDim(k), c->MakeDim(k),
                       c_out});
  return absl::OkStatus();
}

absl::Status DeformPoolShape(InferenceContext* c) {
  ShapeHandle out;
  TF_RETURN_IF_ERROR(PoolShapes(c, &out));
  c->set_output(0, out);
  return absl::OkStatus();
}

absl::Status DeformPoolGradShape(InferenceContext* c) {
  ShapeHandle out, grad;
  TF_RETURN_IF_ERROR(PoolShapes(c, &out));
  if (!c->Merge(c->input(3), out, &grad).ok()) {
    return errors::InvalidArgument(
        "RfcnDeformPsRoiPoolGrad: grad must be [R, k, k, C] = ",
        c->DebugString(out), ", got shape ", c->DebugString(c->input(3)));
  }
  c->set_output(0, c->input(0));
  c->set_output(1, c->input(2));
  return absl::OkStatus();
}

// Output extent of one conv axis as a dimension (unknown when `size` is).
absl::Status ConvAxisDim(InferenceContext* c, DimensionHandle size, int k,
                         int s, int d, int padding, int before, int after,
                         DimensionHandle* out) {
  if (!c->ValueKnown(size)) {
    *out = c->UnknownDim();
    return absl::OkStatus();
  }
  int o, pad;
  rfcn_deform::conv_axis(padding, static_cast<int>(c->Value(size)), k, s, d,
                         before, after, &o, &pad);
  if (o < 1) {
    return errors::InvalidArgument(
        "RfcnDeformIm2Col: input extent ", c->Value(size),
        " is smaller than the dilated kernel (", (k - 1) * d + 1,
        ") with this padding: no output");
  }
  *out = c->MakeDim(o);
  return absl::OkStatus();
}

absl::Status ReadConvAttrs(InferenceContext* c, std::vector<int32>* ks,
                           std::vector<int32>* st, std::vector<int32>* dl,
                           int* padding, std::vector<int32>* pads) {
  std::string pad;
  TF_RETURN_IF_ERROR(c->GetAttr("kernel_size", ks));
  TF_RETURN_IF_ERROR(c->GetAttr("strides", st));
  TF_RETURN_IF_ERROR(c->GetAttr("dilations", dl));
  TF_RETURN_IF_ERROR(c->GetAttr("padding", &pad));
  TF_RETURN_IF_ERROR(c->GetAttr("explicit_paddings", pads));
  if (ks->size() != 2 || st->size() != 2 || dl->size() != 2) {
    return errors::InvalidArgument(
        "RfcnDeformIm2Col: kernel_size, strides and dilations must have 2 "
        "entries (rows, columns)");
  }
  for (int a = 0; a < 2; ++a) {
    if ((*ks)[a] < 1 || (*st)[a] < 1 || (*dl)[a] < 1) {
      return errors::InvalidArgument(
          "RfcnDeformIm2Col: kernel_size, strides and dilations must be >= 1");
    }
  }
  *padding = pad == "SAME"    ? rfcn_deform::kSame
             : pad == "VALID" ? rfcn_deform::kValid
                              : rfcn_deform::kExplicit;
  if (*padding == rfcn_deform::kExplicit) {
    if (pads->size() != 4 || (*pads)[0] < 0 || (*pads)[1] < 0 ||
        (*pads)[2] < 0 || (*pads)[3] < 0) {
      return errors::InvalidArgument(
          "RfcnDeformIm2Col: padding EXPLICIT needs explicit_paddings = [top, "
          "bottom, left, right] >= 0");
    }
  } else {
    pads->assign(4, 0);
  }
  return absl::OkStatus();
}

// input [B, H, W, Cin], offsets [B, Ho, Wo, 2T], mask [B, Ho, Wo, T]:
// *cols = [B, Ho, Wo, T*Cin].
absl::Status Im2ColShapes(InferenceContext* c, ShapeHandle* cols) {
  std::vector<int32> ks, st, dl, pads;
  int padding;
  TF_RETURN_IF_ERROR(ReadConvAttrs(c, &ks, &st, &dl, &padding, &pads));
  ShapeHandle input, offsets, mask;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &input));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &offsets));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 4, &mask));
  DimensionHandle ho, wo;
  TF_RETURN_IF_ERROR(ConvAxisDim(c, c->Dim(input, 1), ks[0], st[0], dl[0],
                                 padding, pads[0], pads[1], &ho));
  TF_RETURN_IF_ERROR(ConvAxisDim(c, c->Dim(input, 2), ks[1], st[1], dl[1],
                                 padding, pads[2], pads[3], &wo));
  const int taps = ks[0] * ks[1];
  ShapeHandle expect_off =
      c->MakeShape({c->Dim(input, 0), ho, wo, c->MakeDim(2 * taps)});
  ShapeHandle expect_mask =
      c->MakeShape({c->Dim(input, 0), ho, wo, c->MakeDim(taps)});
  ShapeHandle merged_off, merged_mask;
  if (!c->Merge(offsets, expect_off, &merged_off).ok()) {
    return errors::InvalidArgument(
        "RfcnDeformIm2Col: offsets must be [B, Ho, Wo, 2*kh*kw] = ",
        c->DebugString(expect_off), ", got shape ", c->DebugString(offsets));
  }
  if (!c->Merge(mask, expect_mask, &merged_mask).ok()) {
    return errors::InvalidArgument(
        "RfcnDeformIm2Col: mask must be [B, Ho, Wo, kh*kw] = ",
        c->DebugString(expect_mask), ", got shape ", c->DebugString(mask));
  }
  DimensionHandle width;
  TF_RETURN_IF_ERROR(c->Multiply(c->Dim(input, 3), taps, &width));
  *cols = c->MakeShape({c->Dim(merged_off, 0), c->Dim(merged_off, 1),
                        c->Dim(merged_off, 2), width});
  return absl::OkStatus();
}

absl::Status Im2ColShape(InferenceContext* c) {
  ShapeHandle cols;
  TF_RETURN_IF_ERROR(Im2ColShapes(c, &cols));
  c->set_output(0, cols);
  return absl::OkStatus();
}

absl::Status Im2ColGradShape(InferenceContext* c) {
  ShapeHandle cols, grad;
  TF_RETURN_IF_ERROR(Im2ColShapes(c, &cols));
  if (!c->Merge(c->input(3), cols, &grad).ok()) {
    return errors::InvalidArgument(
        "RfcnDeformIm2ColGrad: grad_columns must be ", c->DebugString(cols),
        ", got shape ", c->DebugString(c->input(3)));
  }
  c->set_output(0, c->input(0));
  c->set_output(1, c->input(1));
  c->set_output(2, c->input(2));
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("RfcnDeformPsRoiPool")
    .Input("features: T")
    .Input("rois: float")
    .Input("offsets: T")
    .Output("output: T")
    .Attr("output_size: int >= 1 = 7")
    .Attr("spatial_scale: float = 0.0625")
    .Attr("sampling_ratio: int >= 1 = 2")
    .Attr("trans_std: float = 0.1")
    .Attr("offset_groups: int >= 1 = 1")
    .Attr("T: {float, double} = DT_FLOAT")
    .SetShapeFn(DeformPoolShape)
    .Doc(R"doc(
Deformable position-sensitive RoI pooling (Deformable ConvNets sec. 2.2).

PSRoIAlign (ps_roi_pool's bilinear mode) with bin (i, j) of RoI r shifted
by offsets[r, i, j, 2g:2g+2] * trans_std * (RoI height, width) for the
classes of offset group g. Arithmetic: custom_ops/deformable/deformable_math.h.

features: [B, H, W, k*k*C] NHWC, bin-major channels (i*k + j)*C + c.
rois: [R, 5] float32 (batch_index, y1, x1, y2, x2), input-image pixels.
offsets: [R, k, k, 2*offset_groups] normalized (dy, dx) per group.
output: [R, k, k, C].
)doc");

REGISTER_OP("RfcnDeformPsRoiPoolGrad")
    .Input("features: T")
    .Input("rois: float")
    .Input("offsets: T")
    .Input("grad: T")
    .Output("grad_features: T")
    .Output("grad_offsets: T")
    .Attr("output_size: int >= 1 = 7")
    .Attr("spatial_scale: float = 0.0625")
    .Attr("sampling_ratio: int >= 1 = 2")
    .Attr("trans_std: float = 0.1")
    .Attr("offset_groups: int >= 1 = 1")
    .Attr("T: {float, double} = DT_FLOAT")
    .SetShapeFn(DeformPoolGradShape)
    .Doc(R"doc(
Gradient of RfcnDeformPsRoiPool with respect to features and offsets (none
for rois).
)doc");

REGISTER_OP("RfcnDeformIm2Col")
    .Input("input: T")
    .Input("offsets: T")
    .Input("mask: T")
    .Output("columns: T")
    .Attr("kernel_size: list(int) = [3, 3]")
    .Attr("strides: list(int) = [1, 1]")
    .Attr("dilations: list(int) = [1, 1]")
    .Attr("padding: {'SAME', 'VALID', 'EXPLICIT'} = 'SAME'")
    .Attr("explicit_paddings: list(int) = []")
    .Attr("T: {float, double} = DT_FLOAT")
    .SetShapeFn(Im2ColShape)
    .Doc(R"doc(
Deformable im2col (DCN v1 / modulated DCN v2): columns[b, ho, wo, t*Cin + c]
= mask[b, ho, wo, t] * bilinear(input[b, :, :, c], y, x) at the tap's
position shifted by offsets[b, ho, wo, 2t:2t+2] = (dy, dx), t = ki*kw + kj.
The deformable convolution is columns @ reshape(filters, [kh*kw*Cin, Cout]).

input: [B, H, W, Cin] NHWC.
offsets: [B, Ho, Wo, 2*kh*kw].
mask: [B, Ho, Wo, kh*kw] (ones for DCN v1).
columns: [B, Ho, Wo, kh*kw*Cin].
padding: tf.nn.conv2d's SAME / VALID, or EXPLICIT with explicit_paddings
  [top, bottom, left, right].
)doc");

REGISTER_OP("RfcnDeformIm2ColGrad")
    .Input("input: T")
    .Input("offsets: T")
    .Input("mask: T")
    .Input("grad_columns: T")
    .Output("grad_input: T")
    .Output("grad_offsets: T")
    .Output("grad_mask: T")
    .Attr("kernel_size: list(int) = [3, 3]")
    .Attr("strides: list(int) = [1, 1]")
    .Attr("dilations: list(int) = [1, 1]")
    .Attr("padding: {'SAME', 'VALID', 'EXPLICIT'} = 'SAME'")
    .Attr("explicit_paddings: list(int) = []")
    .Attr("T: {float, double} = DT_FLOAT")
    .SetShapeFn(Im2ColGradShape)
    .Doc(R"doc(
Gradient of RfcnDeformIm2Col with respect to input, offsets and mask.
)doc");

}  // namespace tensorflow
