"""Embedded scene kinds: perspective geometry, kind mix, segmentation (small sizes: fast on 2 CPU cores)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from ssr_lightning.data import (
    EmbeddedScenes,
    SRPatchDataset,
    render_scene_info,
    scene_kind,
    scene_split,
    split_indices,
)
from ssr_lightning.data.scenes import _HORIZON, _KIND_CYCLE, _OBJECTS

SPLITS = (("train", 80), ("val", 80), ("test", 80))


def _perspective_ids(split: str = "train", n: int = 8) -> list[int]:
    return [i for i in split_indices(split, 8 * n) if scene_kind(i) == "perspective"][:n]


@pytest.fixture(scope="module")
def scenes() -> list[tuple[int, int, np.ndarray, np.ndarray, dict[str, Any]]]:
    """A few perspective scenes at two sizes: (index, size, image, depth, info)."""
    out = []
    for size, seed in ((96, 0), (128, 1)):
        for i in _perspective_ids("train", 6) + _perspective_ids("test", 2):
            img, depth, info = render_scene_info(i, size, seed)
            out.append((i, size, img, depth, info))
    return out


# ------------------------------------------------------------------------ kinds and splits
def test_kind_proportions_per_split() -> None:
    assert _KIND_CYCLE.count("perspective") == 5 and _KIND_CYCLE.count("layers") == 2
    assert _KIND_CYCLE.count("motorcycle") == 1 and len(_KIND_CYCLE) == 8
    for split, n in SPLITS:
        ids = split_indices(split, n)
        kinds = [scene_kind(i) for i in ids]
        assert Counter(kinds) == {"perspective": 50, "layers": 20, "motorcycle": 10}, split
        assert kinds == [_KIND_CYCLE[r % 8] for r in range(n)]  # the cycle runs over the rank within the split


def test_perspective_splits_disjoint_and_fixed() -> None:
    ids = {s: {i for i in split_indices(s, n) if scene_kind(i) == "perspective"} for s, n in SPLITS}
    assert all(len(v) == 50 for v in ids.values())
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    for s, group in ids.items():
        assert all(scene_split(i) == s for i in group)
    # a larger data set keeps the kinds of the scenes it already had
    assert [scene_kind(i) for i in split_indices("val", 80)] == [scene_kind(i) for i in split_indices("val", 160)[:80]]


def test_perspective_deterministic() -> None:
    i = _perspective_ids("val", 1)[0]
    img, depth, info = render_scene_info(i, 96, seed=4)
    img2, depth2, info2 = render_scene_info(i, 96, seed=4)
    np.testing.assert_array_equal(img, img2)
    np.testing.assert_array_equal(depth, depth2)
    np.testing.assert_array_equal(info["segmentation"], info2["segmentation"])
    assert info["objects"] == info2["objects"]
    assert img.dtype == np.float32 and depth.dtype == np.float32 and info["segmentation"].dtype == np.int16
    assert img.shape == (96, 96, 3) and depth.shape == (96, 96) and info["segmentation"].shape == (96, 96)
    np.testing.assert_array_equal(np.round(img * 255) / 255, img)  # 8-bit grid
    assert not np.array_equal(img, render_scene_info(i, 96, seed=5)[0])
    ds1, ds2 = EmbeddedScenes("val", size=64, num_val=8), EmbeddedScenes("val", size=64, num_val=8)
    for k in range(8):
        a, b = ds1[k], ds2[k]
        assert torch.equal(a["hr"], b["hr"]) and torch.equal(a["segmentation"], b["segmentation"])
        assert torch.equal(ds1[k]["segmentation"], a["segmentation"])  # cached copy equals the first one
        assert a["has_segmentation"] == (ds1.kind(k) != "motorcycle")
        assert a["name"].endswith(ds1.kind(k))


# ------------------------------------------------------------------------ perspective geometry
def test_perspective_scene_layout(scenes) -> None:
    for i, size, _, depth, info in scenes:
        assert info["kind"] == "perspective" and info["split"] == scene_split(i)
        assert _HORIZON[0] * size <= info["horizon"] <= _HORIZON[1] * size
        assert _OBJECTS[0] <= len(info["objects"]) <= _OBJECTS[1]
        seg = info["segmentation"]
        labels = set(np.unique(seg).tolist())
        assert {0, 1} <= labels <= {0, 1} | {o["id"] for o in info["objects"]}
        assert (depth[seg == 0] == 1.0).all()  # background / sky at the far limit
        rows = np.nonzero((seg == 0).any(axis=1))[0]
        assert rows.min() == 0  # the background is at the top
        assert depth.min() >= 0.0 and depth.max() == 1.0
        bottom = seg[-1] == 1
        assert bottom.any() and np.abs(depth[-1][bottom]).max() < 1e-6  # the nearest ground row is depth 0


def test_ground_depth_monotonic_and_pinhole(scenes) -> None:
    for _, _, _, depth, info in scenes:
        seg = info["segmentation"]
        ground = seg == 1
        f, y_v, z_min, z_max = info["focal"], info["vanishing_row"], info["z_min"], info["z_max"]
        ys, _ = np.nonzero(ground)
        # z ∝ 1 / (y − y_v), normalised to [0, 1] between the bottom row and the horizon
        expect = (f / (ys - y_v) - z_min) / (z_max - z_min)
        np.testing.assert_allclose(depth[ground], expect, atol=1e-5)
        assert (ys > info["horizon"]).all()
        for c in range(seg.shape[1]):
            col = depth[:, c][ground[:, c]]
            assert (np.diff(col) < 0).all(), c  # higher in the image (smaller row) = farther
        assert 0.0 <= depth[ground].min() and depth[ground].max() < 1.0


def test_object_depth_agrees_with_occlusion(scenes) -> None:
    pairs = 0
    for _, _, _, depth, info in scenes:
        seg, objs = info["segmentation"], info["objects"]
        f, y_v, z_min, z_max = info["focal"], info["vanishing_row"], info["z_min"], info["z_max"]
        for k, o in enumerate(objs):
            assert o["id"] == 2 + k
            # the object stands on the ground at its contact row: the ground's depth there
            assert o["z"] == pytest.approx(f / (o["contact_row"] - y_v))
            assert o["depth"] == pytest.approx((o["z"] - z_min) / (z_max - z_min))
            m = seg == o["id"]
            if not m.any():
                continue
            np.testing.assert_array_equal(depth[m], np.float32(o["depth"]))  # constant over the object
            # what the object hides is farther: the ground behind it (rows above its contact row) or the sky
            ys = np.nonzero(m)[0]
            assert (ys <= o["contact_row"]).all()
            hidden_ground = np.where(ys > y_v, (f / np.maximum(ys - y_v, 1e-9) - z_min) / (z_max - z_min), 1.0)
            assert (np.minimum(hidden_ground, 1.0) >= o["depth"] - 1e-6).all()
            # objects drawn later are nearer; where an earlier object's own mask is covered, the cover is nearer
            for j in range(k):
                back = objs[j]
                assert o["depth"] < back["depth"]
                y0, y1, x0, x1 = back["box"]
                if m[y0:y1, x0:x1].any():
                    pairs += 1
                    assert (depth[y0:y1, x0:x1][m[y0:y1, x0:x1]] < back["depth"]).all()
    assert pairs > 0  # some objects do overlap


def test_object_height_inverse_to_depth(scenes) -> None:
    tall = 0
    for _, _, _, _, info in scenes:
        f = info["focal"]
        for o in info["objects"]:
            # designed height: f·H / z, i.e. ∝ 1 / z for a given world height
            assert o["height_px"] * o["z"] == pytest.approx(f * o["world_height"], rel=1e-9)
            assert o["width_px"] * o["z"] == pytest.approx(f * o["world_width"], rel=1e-9)
            # the rasterised mask has that height (before occlusion), within 5 % (1.5 px for small objects)
            y0, y1, _, _ = o["box"]
            err = abs((y1 - y0) - o["height_px"])
            assert err <= max(1.5, 0.05 * o["height_px"]), o
            if o["height_px"] >= 30:
                tall += 1
                assert (y1 - y0) * o["z"] / o["world_height"] == pytest.approx(f, rel=0.05)
            assert y1 - 1 <= o["contact_row"] < y1 + 1  # it stands on its contact row
    assert tall > 5


# ------------------------------------------------------------------------ segmentation of other kinds
def test_layers_and_motorcycle_segmentation() -> None:
    seen = set()
    for i in split_indices("train", 16):
        kind = scene_kind(i)
        if kind == "perspective":
            continue
        seen.add(kind)
        _, _, info = render_scene_info(i, 64, 0)
        seg = info["segmentation"]
        assert seg.dtype == np.int16 and seg.shape == (64, 64)
        if kind == "layers":
            assert info["has_segmentation"]
            lid = info["layer_id"]
            np.testing.assert_array_equal(seg == 0, lid == 0)
            assert (seg[lid > 0] >= 2).all()
            np.testing.assert_array_equal(seg[lid > 0], lid[lid > 0] + 1)
        else:
            assert not info["has_segmentation"] and not seg.any()
    assert seen == {"layers", "motorcycle"}


# ------------------------------------------------------------------------ segmentation through crops / flips
class _Coded(Dataset):
    """HR image + depth + segmentation that all encode the pixel position, so any misalignment shows."""

    def __init__(self, size: int = 64) -> None:
        yy, xx = np.mgrid[0:size, 0:size]
        self.code = (yy * size + xx).astype(np.int64)
        self.size = size

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> dict[str, Any]:
        code = self.code + i
        hr = np.stack([code / code.max(), np.zeros_like(code, float), np.ones_like(code, float)]).astype(np.float32)
        return {"hr": torch.from_numpy(hr), "depth": torch.from_numpy((code / 1e4).astype(np.float32))[None],
                "segmentation": torch.from_numpy(code)[None], "has_segmentation": True, "index": i, "name": f"c{i}"}


@pytest.mark.parametrize("augment", ["full", "hflip"])
def test_segmentation_follows_depth_through_augmentation(augment: str) -> None:
    base = _Coded(64)
    train = SRPatchDataset(base, "train", 32, 4, seed=3, augment=augment)
    orientations = set()
    for epoch in range(4):
        for i in range(len(base)):
            item = train[(epoch, i)]
            seg, depth = item["segmentation"], item["depth"]
            assert seg.shape == (1, 32, 32) and seg.dtype == torch.int64
            torch.testing.assert_close(depth, (seg.double() / 1e4).float(), rtol=0, atol=0)
            s = seg[0].numpy() - i
            dy, dx = int(np.sign(s[1, 0] - s[0, 0])), int(np.sign(s[0, 1] - s[0, 0]))
            orientations.add((dy, dx, abs(s[1, 0] - s[0, 0]) == 1))  # (row step, column step, transposed)
            if augment == "hflip":
                assert s[1, 0] - s[0, 0] == 64  # rows keep their order: up stays up
    if augment == "hflip":
        assert {o[1] for o in orientations} == {-1, 1}  # mirrored and not mirrored
    else:
        assert len(orientations) > 2  # vertical flips / rotations happen too
    val = SRPatchDataset(base, "val", 32, 4)[1]
    np.testing.assert_array_equal(val["segmentation"][0].numpy(), base.code[16:48, 16:48] + 1)


def test_scene_segmentation_aligned_after_crop() -> None:
    ds = EmbeddedScenes("train", size=96, num_train=16)
    checked = 0
    for augment in ("full", "hflip"):
        patches = SRPatchDataset(ds, "train", 48, 4, seed=1, augment=augment)
        for i in range(len(ds)):
            if ds.kind(i) != "perspective":
                continue
            item = patches[(2, i)]
            _, _, info = render_scene_info(ds.scene_ids[i], 96, 0)
            seg, depth = item["segmentation"][0].numpy(), item["depth"][0].numpy()
            assert item["has_segmentation"]
            assert (depth[seg == 0] == 1.0).all() and (depth[seg == 1] < 1.0).all()
            for o in info["objects"]:
                assert (depth[seg == o["id"]] == np.float32(o["depth"])).all()
            if augment == "hflip" and (seg == 0).any() and (seg == 1).any():
                checked += 1  # the sky stays above the ground: "up = far" survives
                assert np.nonzero((seg == 0).any(1))[0].max() < np.nonzero((seg == 1).any(1))[0].min()
    assert checked > 3
