"""Pose maps: RT-DETR finds the people, ViTPose places each one's keypoints (transformers), skeleton.py draws.

ViTPose checkpoints with 17 COCO keypoints give the body; a COCO-WholeBody one (133 keypoints) adds hands
and face. Both models are fetched on first use.
"""

from __future__ import annotations

import numpy as np

from engine.errors import UserError
from engine.images.preprocess.hub import HubModel, fetch, load
from engine.images.preprocess.skeleton import draw_pose

DETECTOR = HubModel("PekingU/rtdetr_r50vd_coco_o365", 172_000_000)
POSE = HubModel("usyd-community/vitpose-base-simple", 344_000_000)
PERSON_THRESHOLD = 0.3
KEYPOINT_THRESHOLD = 0.3


def person_boxes(image, locator, device) -> np.ndarray:
    """[N, 4] boxes (x, y, width, height) of the people in `image`."""
    import torch

    model, processor = load("RTDetrForObjectDetection", "RTDetrImageProcessorPil", fetch(DETECTOR, locator),
                            str(device))
    inputs = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        out = model(pixel_values=inputs.pixel_values.to(model.device, model.dtype))
    found = processor.post_process_object_detection(out, target_sizes=torch.tensor([(image.height, image.width)]),
                                                    threshold=PERSON_THRESHOLD)[0]
    person = [i for i, name in model.config.id2label.items() if str(name).lower() == "person"] or [0]
    boxes = found["boxes"][torch.isin(found["labels"].cpu(), torch.tensor(person))].float().cpu().numpy()
    boxes[:, 2:] -= boxes[:, :2]  # (x0, y0, x1, y1) -> (x, y, w, h)
    return boxes[(boxes[:, 2] >= 1) & (boxes[:, 3] >= 1)]


def pose_map(image, locator, device):
    """PIL RGB image -> RGB OpenPose-style map of the same size."""
    import torch

    boxes = person_boxes(image, locator, device)
    if not len(boxes):
        raise UserError("pose: no person found in the control image; use a photo where a person is clearly "
                        "visible, or give a ready pose map with control mode 'raw'")
    model, processor = load("VitPoseForPoseEstimation", "VitPoseImageProcessorPil", fetch(POSE, locator),
                            str(device))
    inputs = processor(image, boxes=[boxes.tolist()], return_tensors="pt")
    extra = {}
    if getattr(model.config.backbone_config, "num_experts", 1) > 1:  # ViTPose+: expert 0 is COCO
        extra["dataset_index"] = torch.zeros(len(boxes), dtype=torch.long, device=model.device)
    with torch.no_grad():
        out = model(pixel_values=inputs.pixel_values.to(model.device, model.dtype), **extra)
    out.heatmaps = out.heatmaps.float().cpu()
    people = processor.post_process_pose_estimation(out, boxes=[boxes.tolist()])[0]
    return draw_pose([(p["keypoints"].numpy(), p["scores"].numpy()) for p in people], image.size,
                     KEYPOINT_THRESHOLD)
