"""Control-map preprocessors on tiny random models of their real architectures, written by the test (no download)."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from engine.errors import DownloadError, UserError
from engine.weights.files import FileLocator
from engine.images.preprocess import control_map, depth, hub, pose
from engine.images.preprocess.skeleton import draw_pose, openpose_body
from engine.settings import GenerationSettings

SIZE = (96, 64)  # w, h: not square, so a swapped axis shows


@pytest.fixture
def picture():
    rng = np.random.default_rng(1)
    a = (rng.random((SIZE[1], SIZE[0], 3)) * 60).astype(np.uint8)
    a[16:48, 30:70] = 220
    return Image.fromarray(a)


def opts(**kw):
    return GenerationSettings(model_type="z_image_control", prompt="x", **kw)


def folder_for(locator, model: hub.HubModel):
    return locator.checkpoints / "preprocessors" / model.folder_name


def write_depth(locator, model=depth.MODELS["small"]):
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            patch_size=14, image_size=56, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    torch.manual_seed(0)
    net = DepthAnythingForDepthEstimation(DepthAnythingConfig(
        backbone_config=backbone, fusion_hidden_size=16, neck_hidden_sizes=[8, 16, 32, 32], reassemble_hidden_size=32,
        head_hidden_size=8, depth_estimation_type="relative"))
    folder = folder_for(locator, model)
    net.save_pretrained(str(folder))
    DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(str(folder))


def write_pose(locator, person_bias=10.0, keypoints=17):
    """A tiny RT-DETR (its 'person' class made certain or impossible) and a tiny ViTPose (confident heatmaps)."""
    from transformers import (RTDetrConfig, RTDetrForObjectDetection, RTDetrImageProcessor, RTDetrResNetConfig,
                              VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessor)

    torch.manual_seed(0)
    backbone = RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                                  layer_type="basic", out_features=["stage2", "stage3", "stage4"])
    detector = RTDetrForObjectDetection(RTDetrConfig(
        backbone_config=backbone, d_model=32, encoder_hidden_dim=32, encoder_in_channels=[16, 16, 16],
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=3, decoder_layers=1, encoder_layers=1,
        decoder_attention_heads=2, encoder_attention_heads=2, num_labels=2, id2label={0: "cat", 1: "person"},
        label2id={"cat": 0, "person": 1}, num_denoising=0, decoder_in_channels=[32, 32, 32], num_feature_levels=3))
    with torch.no_grad():
        for head in detector.model.decoder.class_embed:
            head.bias[:] = torch.tensor([-10.0, person_bias])
    folder = folder_for(locator, pose.DETECTOR)
    detector.save_pretrained(str(folder))
    RTDetrImageProcessor(size={"height": 64, "width": 64}).save_pretrained(str(folder))
    net = VitPoseForPoseEstimation(VitPoseConfig(
        backbone_config=VitPoseBackboneConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                                              image_size=[64, 48], patch_size=[16, 16], out_indices=[2]),
        num_labels=keypoints))
    with torch.no_grad():
        net.head.conv.bias.fill_(2.0)  # every keypoint confident, so every part gets drawn
    folder = folder_for(locator, pose.POSE)
    net.save_pretrained(str(folder))
    VitPoseImageProcessor(size={"height": 64, "width": 48}).save_pretrained(str(folder))


@pytest.fixture
def locator(tmp_path):
    hub.release()
    yield FileLocator(checkpoints=tmp_path / "ckpts", offline=True)
    hub.release()


def test_canny_edges(picture, locator):
    edges = np.asarray(control_map(picture, "canny", opts(canny_low=50, canny_high=150), locator, "cpu"))
    assert edges.shape == (SIZE[1], SIZE[0], 3) and set(np.unique(edges)) <= {0, 255}
    assert edges[16, 30:70].max() == 255 and edges[30, 45:55].max() == 0  # the box outline, not its inside
    none = np.asarray(control_map(picture, "canny", opts(canny_low=900, canny_high=1000), locator, "cpu"))
    assert none.sum() < edges.sum()  # the thresholds matter


def test_gray_and_raw(picture, locator):
    gray = np.asarray(control_map(picture, "gray", opts(), locator, "cpu"))
    assert gray.shape == (SIZE[1], SIZE[0], 3) and (gray[..., 0] == gray[..., 2]).all()
    assert np.array_equal(np.asarray(control_map(picture, "raw", opts(), locator, "cpu")), np.asarray(picture))


def test_depth_anything(picture, locator):
    write_depth(locator)
    out = np.asarray(control_map(picture, "depth", opts(depth_model="small"), locator, "cpu"))
    assert out.shape == (SIZE[1], SIZE[0], 3) and out.min() == 0 and out.max() == 255
    assert (out[..., 0] == out[..., 1]).all()
    with pytest.raises(DownloadError, match="Depth-Anything-V2-Large-hf.*1.3 GB"):  # large: a separate model
        control_map(picture, "depth", opts(depth_model="large"), locator, "cpu")


@pytest.mark.parametrize("keypoints", [17, 133])
def test_pose_from_photo(picture, locator, keypoints):
    write_pose(locator, keypoints=keypoints)
    out = np.asarray(control_map(picture, "pose", opts(), locator, "cpu"))
    assert out.shape == (SIZE[1], SIZE[0], 3) and out.max() > 0
    if keypoints == 133:  # face points are white
        assert (out == 255).all(axis=-1).any()


def test_no_person_is_a_clear_error(picture, locator):
    write_pose(locator, person_bias=-10.0)
    with pytest.raises(UserError, match="no person found"):
        control_map(picture, "pose", opts(), locator, "cpu")


def test_maps_are_cached(picture, locator, monkeypatch):
    write_depth(locator)
    first = control_map(picture, "depth", opts(), locator, "cpu")
    monkeypatch.setattr(depth, "depth_map", lambda *a: pytest.fail("the map was computed twice"))
    assert np.array_equal(np.asarray(control_map(picture, "depth", opts(), locator, "cpu")), np.asarray(first))


def test_skeleton_drawing():
    kp = np.zeros((17, 2))
    kp[5], kp[6] = (60, 20), (20, 20)  # left and right shoulder (COCO order)
    kp[7], kp[8] = (70, 40), (10, 40)  # elbows
    scores = np.zeros(17)
    scores[[5, 6, 7, 8]] = 0.9
    body = openpose_body(kp, scores, 0.3)
    assert body[1] == (40, 20) and body[2] == (20, 20) and body[5] == (60, 20) and body[0] is None
    img = np.asarray(draw_pose([(kp, scores)], (80, 60)))
    assert img[20, 30].tolist() != [0, 0, 0]  # neck to right shoulder limb
    assert img[20, 40].tolist() != [0, 0, 0] and img[55, 40].tolist() == [0, 0, 0]


def test_weights_come_from_the_checkpoints_folder(locator):
    with pytest.raises(DownloadError, match="rtdetr_r50vd_coco_o365"):
        hub.fetch(pose.DETECTOR, locator)
    write_pose(locator)
    assert hub.fetch(pose.DETECTOR, locator) == locator.checkpoints / "preprocessors" / "rtdetr_r50vd_coco_o365"
    assert dataclasses.is_dataclass(pose.POSE)
