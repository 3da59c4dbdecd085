"""Float64 NumPy references for the model's functional core, written from the papers' rules.

Used by tests/model/test_{proposals,targets,losses,postprocess}.py. Plain loops, no TF.
Boxes are yxyx; deltas (dy, dx, dh, dw).
"""

import math

import numpy as np


def np_iou(a, b):
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    out = np.zeros((len(a), len(b)))
    for i, (ay1, ax1, ay2, ax2) in enumerate(a):
        area_a = max(ay2 - ay1, 0) * max(ax2 - ax1, 0)
        for j, (by1, bx1, by2, bx2) in enumerate(b):
            area_b = max(by2 - by1, 0) * max(bx2 - bx1, 0)
            if area_a <= 0 or area_b <= 0:
                continue
            inter = max(min(ay2, by2) - max(ay1, by1), 0) * max(min(ax2, bx2) - max(ax1, bx1), 0)
            out[i, j] = inter / (area_a + area_b - inter)
    return out


def np_decode(deltas, anchors, weights=(1, 1, 1, 1), clip=math.log(1000 / 16)):  # noqa: B008 (a constant)
    deltas = np.asarray(deltas, np.float64)
    anchors = np.asarray(anchors, np.float64)
    ha = anchors[..., 2] - anchors[..., 0]
    wa = anchors[..., 3] - anchors[..., 1]
    yca, xca = anchors[..., 0] + ha / 2, anchors[..., 1] + wa / 2
    dy, dx = deltas[..., 0] / weights[0], deltas[..., 1] / weights[1]
    dh = np.minimum(deltas[..., 2] / weights[2], clip)
    dw = np.minimum(deltas[..., 3] / weights[3], clip)
    yc, xc = dy * ha + yca, dx * wa + xca
    h, w = np.exp(dh) * ha, np.exp(dw) * wa
    return np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], -1)


def np_encode(boxes, anchors, weights=(1, 1, 1, 1)):
    boxes = np.asarray(boxes, np.float64)
    anchors = np.asarray(anchors, np.float64)
    h, w = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    ha, wa = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    return np.stack(
        [
            weights[0] * (boxes[..., 0] + h / 2 - anchors[..., 0] - ha / 2) / ha,
            weights[1] * (boxes[..., 1] + w / 2 - anchors[..., 1] - wa / 2) / wa,
            weights[2] * np.log(h / ha),
            weights[3] * np.log(w / wa),
        ],
        -1,
    )


def np_clip(boxes, h, w):
    boxes = np.array(boxes, np.float64)
    boxes[..., 0::2] = np.clip(boxes[..., 0::2], 0, h)
    boxes[..., 1::2] = np.clip(boxes[..., 1::2], 0, w)
    return boxes


def np_nms(boxes, scores, iou_threshold, max_out):
    """Greedy NMS: indices in decreasing score order (ties: lower index), -inf never kept."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if not scores[i] > -np.inf:
            continue
        if all(np_iou(boxes[i], boxes[j])[0, 0] <= iou_threshold for j in keep):
            keep.append(i)
        if len(keep) == max_out:
            break
    return keep


def np_proposals(logits, deltas, anchors, image_shape, pre_n, post_n, nms_iou, min_size):
    """One image: (boxes [n, 4], probabilities [n]) by Faster R-CNN sec. 3.3's recipe."""
    boxes = np_clip(np_decode(deltas, anchors), *image_shape)
    h, w = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    logits = np.where(
        (h >= min_size) & (w >= min_size) & (h > 0) & (w > 0),
        np.asarray(logits, np.float64),
        -np.inf,
    )
    order = sorted(range(len(logits)), key=lambda i: (-logits[i], i))[:pre_n]
    keep = np_nms(boxes[order], logits[order], nms_iou, post_n)
    idx = [order[k] for k in keep]
    return boxes[idx], 1 / (1 + np.exp(-logits[idx]))


def np_match(iou, gt_valid, low, high, low_quality, labels_by_interval=(0, -1, 1)):
    """Faster R-CNN sec. 3.1.2 labels for one image: (matched index, labels in {-1, 0, 1}).

    labels_by_interval: the labels of IoU in [0, low), [low, high), [high, 1]; (-1, 0, 1) gives
    Fast R-CNN's RoI rule (background in [low, high)). No valid gt: everything 0.
    """
    lo_l, mid_l, hi_l = labels_by_interval
    n, g = iou.shape
    cols = [j for j in range(g) if gt_valid[j]]
    labels = np.zeros(n, np.int64)
    matched = np.zeros(n, np.int64)
    if not cols:
        return matched, labels
    for i in range(n):
        best_j = max(cols, key=lambda j: (iou[i, j], -j))
        matched[i] = best_j
        best = iou[i, best_j]
        labels[i] = hi_l if best >= high else (mid_l if best >= low else lo_l)
    if low_quality:
        for j in cols:
            m = iou[:, j].max()
            if m > 0:
                labels[iou[:, j] == m] = 1
    return matched, labels


def np_smooth_l1(x, beta):
    x = np.asarray(x, np.float64)
    if beta == 0:
        return np.abs(x)
    return np.where(np.abs(x) < beta, 0.5 * x**2 / beta, np.abs(x) - 0.5 * beta)


def np_softmax_ce(logits, label):
    logits = np.asarray(logits, np.float64)
    m = logits.max()
    return -(logits[label] - m - np.log(np.exp(logits - m).sum()))
