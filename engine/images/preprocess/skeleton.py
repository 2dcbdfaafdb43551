"""Keypoints drawn as an OpenPose-style map (the format DWPose draws and pose control models learned).

Body: the 18 OpenPose points (COCO's 17 plus a neck between the shoulders), limbs as coloured ellipses at
60% opacity, joints as dots. COCO-WholeBody models (133 points) also get hands (hue-coloured bones, blue
points) and face (white points).
"""

from __future__ import annotations

import math

import numpy as np

# OpenPose point i comes from COCO point COCO_OF[i]; None: the neck, between the shoulders (COCO 5 and 6).
COCO_OF = [0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17)]
COLORS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
          (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
          (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85)]
HAND_BONES = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
              (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20)]
WHOLEBODY = {"face": range(23, 91), "left_hand": range(91, 112), "right_hand": range(112, 133)}
STICK, JOINT = 4, 4


def openpose_body(keypoints: np.ndarray, scores: np.ndarray, threshold: float) -> list:
    """COCO-ordered [K, 2] keypoints -> 18 OpenPose points, each (x, y) or None when not confident."""
    def point(i):
        return tuple(keypoints[i]) if scores[i] >= threshold else None

    body = []
    for coco in COCO_OF:
        if coco is None:
            a, b = point(5), point(6)
            body.append(((a[0] + b[0]) / 2, (a[1] + b[1]) / 2) if a and b else None)
        else:
            body.append(point(coco))
    return body


def draw_pose(people, size: tuple[int, int], threshold: float = 0.3):
    """people: [(keypoints [K, 2] in pixels, scores [K])]; returns an RGB PIL image of `size` (w, h)."""
    import cv2
    from PIL import Image

    canvas = np.zeros((size[1], size[0], 3), np.uint8)
    people = [(np.asarray(k, float), np.asarray(s, float)) for k, s in people]
    for keypoints, scores in people:  # every body first, then hands and faces on top (as DWPose draws)
        canvas = _draw_body(cv2, canvas, openpose_body(keypoints, scores, threshold))
    for keypoints, scores in (p for p in people if len(p[0]) >= 133):
        for part in ("left_hand", "right_hand"):
            idx = list(WHOLEBODY[part])
            _draw_hand(cv2, canvas, keypoints[idx], scores[idx], threshold)
    for keypoints, scores in (p for p in people if len(p[0]) >= 133):
        for i in WHOLEBODY["face"]:
            if scores[i] >= threshold:
                cv2.circle(canvas, _px(keypoints[i]), 3, (255, 255, 255), thickness=-1)
    return Image.fromarray(canvas, "RGB")


def _px(p) -> tuple[int, int]:
    return int(round(p[0])), int(round(p[1]))


def _draw_body(cv2, canvas, body):
    for (a, b), color in zip(LIMBS, COLORS):
        if body[a] is None or body[b] is None:
            continue
        (x0, y0), (x1, y1) = body[a], body[b]
        length = math.hypot(x1 - x0, y1 - y0)
        angle = math.degrees(math.atan2(y1 - y0, x1 - x0))
        poly = cv2.ellipse2Poly(_px(((x0 + x1) / 2, (y0 + y1) / 2)), (int(length / 2), STICK), int(angle), 0, 360, 1)
        layer = canvas.copy()
        cv2.fillConvexPoly(layer, poly, color)
        canvas = cv2.addWeighted(canvas, 0.4, layer, 0.6, 0)
    for point, color in zip(body, COLORS):
        if point is not None:
            cv2.circle(canvas, _px(point), JOINT, color, thickness=-1)
    return canvas


def _draw_hand(cv2, canvas, keypoints, scores, threshold):
    for i, (a, b) in enumerate(HAND_BONES):
        if scores[a] >= threshold and scores[b] >= threshold:
            hue = np.array([[[i / len(HAND_BONES) * 180, 255, 255]]], np.uint8)
            color = tuple(int(c) for c in cv2.cvtColor(hue, cv2.COLOR_HSV2RGB)[0, 0])
            cv2.line(canvas, _px(keypoints[a]), _px(keypoints[b]), color, thickness=2)
    for p, s in zip(keypoints, scores):
        if s >= threshold:
            cv2.circle(canvas, _px(p), 4, (0, 0, 255), thickness=-1)
