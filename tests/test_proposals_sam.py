"""The SAM proposal backend: checkpoint errors, and a tiny random SAM run end to end on CPU."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from refbench.errors import CheckpointError, ConfigError
from refbench.proposals import get_backend
from refbench.proposals.sam import build_sam_model


def tiny_sam(img_size: int = 64):
    """A randomly initialised Sam small enough to run on CPU in a second."""
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    torch.manual_seed(0)
    dim = 32
    return Sam(
        image_encoder=ImageEncoderViT(img_size=img_size, patch_size=16, embed_dim=32, depth=1,
                                      num_heads=2, out_chans=dim, window_size=0,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(img_size // 16,) * 2,
                                     input_image_size=(img_size, img_size), mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=dim,
                                 transformer=TwoWayTransformer(depth=1, embedding_dim=dim,
                                                               mlp_dim=64, num_heads=2),
                                 iou_head_depth=2, iou_head_hidden_dim=16),
    ).eval()


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"sam_b\.pth does not exist"):
        get_backend("sam", checkpoint=tmp_path / "sam_b.pth", model_type="vit_b")
    with pytest.raises(ConfigError, match="--checkpoint"):
        get_backend("sam")


def test_a_file_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a torch file")
    with pytest.raises(CheckpointError, match=r"junk\.pth cannot be read safely"):
        build_sam_model(junk, "vit_b")
    pickled = tmp_path / "obj.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "epoch": 3}, pickled)
    with pytest.raises(CheckpointError, match="not a state dict of tensors"):
        build_sam_model(pickled, "vit_b")


def test_a_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    wrong = tmp_path / "tiny.pth"
    torch.save(tiny_sam().state_dict(), wrong)
    with pytest.raises(CheckpointError, match=r"tiny\.pth does not fit model type vit_b"):
        build_sam_model(wrong, "vit_b")
    with pytest.raises(ConfigError, match="vit_x"):
        build_sam_model(wrong, "vit_x")


def test_tiny_sam_runs_the_automatic_generator_and_post_processing():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, size=(48, 40, 3), dtype=np.uint8),
              rng.integers(0, 255, size=(30, 52, 3), dtype=np.uint8)]
    # random weights: accept every mask so that the post-processing has work to do
    backend = get_backend("sam", model=tiny_sam(), points_per_side=4, pred_iou_thresh=-1e9,
                          stability_score_thresh=-1e9, max_proposals=5, min_area=20,
                          batch_size=2)
    results = backend.propose_batch(images)
    assert len(results) == 2
    assert backend.config()["points_per_side"] == 4
    for image, rles in zip(images, results):
        h, w = image.shape[:2]
        assert 1 <= len(rles) <= 5
        coco = [{"size": r["size"], "counts": r["counts"].encode()} for r in rles]
        masks = mask_utils.decode(coco).transpose(2, 0, 1).astype(bool)
        assert masks.shape[1:] == (h, w)
        areas = masks.reshape(len(masks), -1).sum(axis=1)
        assert (areas >= 20).all() and list(areas) == sorted(areas, reverse=True)
        for i in range(len(masks)):
            for j in range(i):
                inter = (masks[i] & masks[j]).sum()
                union = (masks[i] | masks[j]).sum()
                assert inter / union <= 0.8
    # the batched encoder path gives what one image at a time gives
    assert backend.propose(images[1]) == results[1]


def test_sam_defaults_are_the_papers():
    backend = get_backend("sam", model=tiny_sam())
    config = backend.config()
    assert config["points_per_side"] == 8
    assert config["pred_iou_thresh"] == 0.7 and config["stability_score_thresh"] == 0.7
    assert config["max_proposals"] == 40 and config["min_area"] == 1000
    assert config["dedup_iou"] == 0.8
