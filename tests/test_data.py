"""Embedded scenes, folder data sets, augmentation and the DataModule (small sizes: fast on 2 CPU cores)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssr_lightning.data import (
    DataError,
    EmbeddedScenes,
    EpochSampler,
    HRFolderDataset,
    ImageReadError,
    PairedFolderDataset,
    PatchAugment,
    SRPatchDataset,
    render_scene,
    render_scene_info,
    sample_seed,
    scene_kind,
    scene_split,
    split_indices,
)
from ssr_lightning.data.scenes import _TRAIN_FRACTION, _motorcycle

REPO = Path(__file__).resolve().parents[1]
DEGRADED_KEYS = {"lr", "kernel", "depth_lr", "noise_sigma", "jpeg_quality", "invariant", "lens"}


def _png(path: Path, h: int, w: int, seed: int = 0) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


def _small_dm(**kw):
    from ssr_lightning.data import SRDataModule

    args = {"num_train": 8, "num_val": 4, "num_test": 4, "batch_size": 4, "val_batch_size": 2,
            "test_batch_size": 2, "patch_size": 48, "val_size": 48, "test_size": 48, "embedded_scene_size": 64}
    args.update(kw)
    return SRDataModule(**args)


# ------------------------------------------------------------------------ embedded scenes
def test_render_scene_deterministic_and_typed() -> None:
    for idx in (0, 1, 3):  # a perspective, a layer and a motorcycle scene
        a_img, a_d = render_scene(idx, 96, seed=5)
        b_img, b_d = render_scene(idx, 96, seed=5)
        np.testing.assert_array_equal(a_img, b_img)
        np.testing.assert_array_equal(a_d, b_d)
        assert a_img.shape == (96, 96, 3) and a_d.shape == (96, 96)
        assert a_img.dtype == np.float32 and a_d.dtype == np.float32
        assert 0 <= a_img.min() and a_img.max() <= 1 and 0 <= a_d.min() and a_d.max() <= 1
    assert not np.array_equal(render_scene(0, 96, seed=5)[0], render_scene(0, 96, seed=6)[0])
    ds1, ds2 = EmbeddedScenes("val", size=64, num_val=3), EmbeddedScenes("val", size=64, num_val=3)
    for i in range(3):
        assert torch.equal(ds1[i]["hr"], ds2[i]["hr"]) and torch.equal(ds1[i]["depth"], ds2[i]["depth"])
    assert torch.equal(ds1[1]["hr"], ds1[1]["hr"])  # cached copy equals a fresh render
    item = ds1[0]
    assert set(item) == {"hr", "depth", "segmentation", "has_segmentation", "index", "name"}
    assert item["hr"].shape == (3, 64, 64) and item["depth"].shape == (1, 64, 64)
    assert item["segmentation"].shape == (1, 64, 64) and item["segmentation"].dtype == torch.int64


def test_splits_disjoint() -> None:
    ids = {s: set(EmbeddedScenes(s, size=32).scene_ids) for s in ("train", "val", "test")}
    assert len(ids["train"]) == 240 and len(ids["val"]) == 16 and len(ids["test"]) == 24
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    for s, group in ids.items():
        assert all(scene_split(i) == s for i in group)
    # growing the training set never moves a scene into or out of the held-out splits
    assert set(split_indices("test", 24)) == set(split_indices("test", 40)[:24])
    n_moto = sum(scene_kind(i) == "motorcycle" for i in ids["train"])
    assert n_moto == 30  # 1 in 8


def test_motorcycle_regions_do_not_overlap() -> None:
    w = _motorcycle()[1].shape[1]
    cut = round(_TRAIN_FRACTION * w)
    moto = {s: [i for i in split_indices(s, n) if scene_kind(i) == "motorcycle"]
            for s, n in (("train", 80), ("val", 16), ("test", 24))}
    assert all(moto.values())
    for s, ids in moto.items():
        for i in ids:
            for seed in (0, 1):
                _, _, info = render_scene_info(i, 128, seed)
                _, _, x0, x1 = info["crop_box"]
                if s == "train":
                    assert x1 <= cut, (i, info["crop_box"])
                else:
                    assert x0 >= cut, (i, info["crop_box"])


def test_depth_consistent_with_occlusion() -> None:
    checked = 0
    for i in split_indices("train", 64):
        _, depth, info = render_scene_info(i, 128, seed=2)
        if info["kind"] != "layers":
            continue
        layer_id, planes = info["layer_id"], info["planes"]
        assert layer_id.max() >= 1
        for k in range(1, len(planes)):
            m = layer_id == k
            if not m.any():
                continue
            # the visible layer is nearer than every layer behind it, in particular the background
            np.testing.assert_allclose(depth[m], planes[k][m])
            for j in range(k):
                assert (depth[m] < planes[j][m]).all(), (i, k, j)
            checked += 1
        assert (depth[layer_id == 0] >= 0.72 - 1e-6).all()  # background is far
        # segmentation: background 0, layer k → k + 1
        np.testing.assert_array_equal(info["segmentation"], np.where(layer_id > 0, layer_id + 1, 0))
    assert checked > 20


# ------------------------------------------------------------------------ augmentation / seeds
def test_patch_augment_identical_on_image_and_depth() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((64, 64, 3), dtype=np.float32)
    depth = img[..., 1].copy()
    seg = (img[..., 2] * 1000).astype(np.int64)
    aug = PatchAugment(32)
    outs = [aug(img, depth, s) for s in range(6)]
    for o_img, o_d in outs:
        assert o_img.shape == (32, 32, 3) and o_d.shape == (32, 32)
        np.testing.assert_array_equal(o_img[..., 1], o_d)
    np.testing.assert_array_equal(aug(img, depth, 3)[0], outs[3][0])
    assert not all(np.array_equal(outs[0][0], o[0]) for o in outs[1:])
    # a segmentation gets the same transform, and adding it does not change the image / depth patch
    for s in range(6):
        o_img, o_d, o_s = aug(img, depth, s, seg)
        np.testing.assert_array_equal(o_img, outs[s][0])
        np.testing.assert_array_equal(o_d, outs[s][1])
        assert o_s.dtype == np.int64
        np.testing.assert_array_equal(o_s, (o_img[..., 2] * 1000).astype(np.int64))
    with pytest.raises(ValueError, match="augment"):
        PatchAugment(32, "vflip")  # type: ignore[arg-type]


def test_patch_augment_hflip_keeps_up_direction() -> None:
    # rows increasing downwards: "hflip" may only crop and mirror left/right, so rows keep their order
    img = np.tile(np.arange(64, dtype=np.float32)[:, None, None], (1, 64, 3)) / 64
    img[..., 0] += np.arange(64, dtype=np.float32)[None, :] / 4096  # make columns distinguishable
    depth = img[..., 0].copy()
    aug, full = PatchAugment(32, "hflip"), PatchAugment(32, "full")
    mirrored = 0
    for s in range(12):
        o_img, o_d = aug(img, depth, s)
        assert (np.diff(o_img[:, 0, 1]) > 0).all()  # top stays top
        mirrored += bool(o_d[0, 1] < o_d[0, 0])
    assert 0 < mirrored < 12
    assert any((np.diff(full(img, depth, s)[0][:, 0, 1]) <= 0).any() for s in range(12))


def test_seeds_and_epoch_sampler() -> None:
    assert sample_seed(0, "train", 5, 1) == sample_seed(0, "train", 5, 1)
    assert sample_seed(0, "train", 5, 1) != sample_seed(0, "train", 5, 2)
    assert sample_seed(0, "val", 5) != sample_seed(0, "test", 5)
    assert 0 <= sample_seed(123, "train", 10**9, 10**6) < 2**63
    s = EpochSampler(10, num_samples=25, seed=1)
    keys = list(s)
    assert len(keys) == 25 and all(k[0] == 0 for k in keys)
    s.set_epoch(3)
    keys3 = list(s)
    assert all(k[0] == 3 for k in keys3) and [k[1] for k in keys3] != [k[1] for k in keys]


# ------------------------------------------------------------------------ folders
def test_hr_folder_dataset(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", 50, 70)  # not a multiple of 4 -> cropped to 48×68
    _png(tmp_path / "sub" / "b.png", 64, 64, 1)
    np.save(tmp_path / "sub" / "b_depth.npy", np.tile(np.linspace(2.0, 9.0, 64, dtype=np.float32), (64, 1)))
    ds = HRFolderDataset(tmp_path, scale=4)
    assert [p.name for p in ds.files] == ["a.png", "b.png"]  # the depth file is not an image
    a, b = ds[0], ds[1]
    assert a["hr"].shape == (3, 48, 68) and a["depth"].shape == (1, 48, 68)
    assert not a["has_depth"] and torch.all(a["depth"] == 0.5)
    assert not a["has_segmentation"] and a["segmentation"].shape == (1, 48, 68) and not a["segmentation"].any()
    assert b["has_depth"] and b["depth"].shape == (1, 64, 64)
    assert b["depth"][0, 0, 0] == 0.0 and b["depth"][0, 0, -1] == 1.0

    # depth in a separate folder, same stem
    ddir = tmp_path.parent / (tmp_path.name + "_depth")
    ddir.mkdir()
    np.save(ddir / "a.npy", np.ones((50, 70), np.float32) * np.arange(70, dtype=np.float32))
    assert HRFolderDataset(tmp_path, depth_dir=ddir)[0]["has_depth"]

    # patch bigger than an image: clear error naming the file
    wrapped = SRPatchDataset(ds, "train", 64, 4)
    with pytest.raises(ValueError, match=r"a\.png' is 68×48 but patch_size is 64"):
        wrapped[0]
    assert wrapped[1]["hr"].shape == (3, 64, 64)

    # corrupt files are listed (no decoding at construction) and fail loudly when read
    (tmp_path / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    ds2 = HRFolderDataset(tmp_path, scale=4)
    bad = [p.name for p in ds2.files].index("c.png")
    with pytest.raises(ImageReadError, match="c.png"):
        ds2[bad]
    with pytest.raises(DataError, match="missing_dir"):
        HRFolderDataset(tmp_path / "missing_dir")


def test_paired_folder_dataset(tmp_path: Path) -> None:
    hr = _png(tmp_path / "hr" / "0001.png", 64, 48)
    lr_img = np.asarray(Image.fromarray(hr).resize((12, 16), Image.BICUBIC))
    (tmp_path / "lr").mkdir()
    Image.fromarray(lr_img).save(tmp_path / "lr" / "0001x4.png")
    _png(tmp_path / "hr" / "DSC_2_x1.png", 40, 40)
    _png(tmp_path / "lr" / "DSC_2_x4.png", 10, 10)
    ds = PairedFolderDataset(tmp_path / "lr", tmp_path / "hr", scale=4)
    assert len(ds) == 2 and ds.keys == ["0001", "DSC_2"]
    item = ds[0]
    assert item["lr"].shape == (3, 16, 12) and item["hr"].shape == (3, 64, 48)
    patch = SRPatchDataset(ds, "train", 32, 4)[(0, 0)]
    assert patch["lr"].shape == (3, 8, 8) and patch["hr"].shape == (3, 32, 32)
    crop = SRPatchDataset(ds, "val", 32, 4)[0]
    np.testing.assert_array_equal(crop["hr"].numpy(), ds[0]["hr"][:, 16:48, 8:40].numpy())

    _png(tmp_path / "lr" / "bad.png", 10, 10)
    _png(tmp_path / "hr" / "bad.png", 41, 40)  # not 4 × LR
    with pytest.raises(ValueError, match=r"HR image '.*bad.png' is 40×41.*must be 40×40"):
        PairedFolderDataset(tmp_path / "lr", tmp_path / "hr", scale=4)[2]
    _png(tmp_path / "lr" / "orphan.png", 10, 10)
    with pytest.raises(ValueError, match="orphan.png"):
        PairedFolderDataset(tmp_path / "lr", tmp_path / "hr", scale=4)


# ------------------------------------------------------------------------ DataModule
def test_datamodule_embedded_batches() -> None:
    dm = _small_dm()
    dm.setup("fit")
    batch = dm.degrade(next(iter(dm.train_dataloader())))
    assert DEGRADED_KEYS | {"hr", "depth", "seed", "index", "name", "has_depth"} <= set(batch)
    assert {"segmentation", "has_segmentation", "segmentation_lr"} <= set(batch)
    b = 4
    assert batch["hr"].shape == (b, 3, 48, 48) and batch["depth"].shape == (b, 1, 48, 48)
    assert batch["segmentation"].shape == (b, 1, 48, 48) and batch["segmentation"].dtype == torch.int64
    assert batch["segmentation_lr"].shape == (b, 1, 12, 12) and batch["has_segmentation"].dtype == torch.bool
    assert torch.equal(batch["segmentation_lr"], batch["segmentation"][..., ::4, ::4])
    assert batch["lr"].shape == (b, 3, 12, 12) and batch["kernel"].shape == (b, 441, 12, 12)
    assert batch["depth_lr"].shape == (b, 1, 12, 12) and batch["seed"].dtype == torch.int64
    torch.testing.assert_close(batch["kernel"].sum(1), torch.ones(b, 12, 12), atol=1e-4, rtol=0)
    assert all(batch[k].shape == (b,) for k in ("noise_sigma", "jpeg_quality", "invariant"))
    # reproducible: the same epoch gives the same patches, seeds and LR
    again = dm.degrade(next(iter(dm.train_dataloader())))
    assert torch.equal(batch["hr"], again["hr"]) and torch.equal(batch["lr"], again["lr"])
    val = dm.degrade(next(iter(dm.val_dataloader())))
    assert val["hr"].shape == (2, 3, 48, 48) and val["lr"].shape == (2, 3, 12, 12)
    dm.setup("test")
    test = next(iter(dm.test_dataloader()))
    assert test["name"][0].startswith("scene00009")
    assert torch.equal(dm.on_after_batch_transfer(test, 0)["lr"], dm.degrade(test)["lr"])


def test_datamodule_validation_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a multiple of data.scale"):
        _small_dm(patch_size=50)
    with pytest.raises(ValueError, match="exceeds data.embedded_scene_size"):
        _small_dm(patch_size=96)
    with pytest.raises(ValueError, match="train_root"):
        _small_dm(dataset="folder").setup("fit")
    with pytest.raises(ValueError, match="data.augment"):
        _small_dm(augment="rot90")


def test_datamodule_folder_and_paired(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / "train" / f"{i}.png", 64, 66, i)
    _png(tmp_path / "val" / "v.png", 60, 60)
    dm = _small_dm(dataset="folder", train_root=str(tmp_path / "train"), val_root=str(tmp_path / "val"),
                   batch_size=2, val_batch_size=1)
    dm.setup("fit")
    batch = dm.degrade(next(iter(dm.train_dataloader())))
    assert batch["hr"].shape == (2, 3, 48, 48) and batch["lr"].shape == (2, 3, 12, 12)
    assert not batch["has_depth"].any()
    assert not batch["has_segmentation"].any() and not batch["segmentation"].any()
    assert batch["segmentation"].shape == (2, 1, 48, 48) and batch["segmentation_lr"].shape == (2, 1, 12, 12)

    _png(tmp_path / "hr" / "p.png", 64, 64)
    _png(tmp_path / "lr" / "p_x4.png", 16, 16)
    dm = _small_dm(dataset="paired", train_root=str(tmp_path / "hr"), train_lr_root=str(tmp_path / "lr"),
                   test_root=str(tmp_path / "hr"), test_lr_root=str(tmp_path / "lr"), batch_size=1,
                   test_size=None, test_batch_size=1)
    dm.setup("fit")
    pb = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert pb["lr"].shape == (1, 3, 12, 12) and pb["hr"].shape == (1, 3, 48, 48) and "kernel" not in pb
    assert "segmentation" not in pb and "segmentation_lr" not in pb
    dm.setup("test")
    tb = next(iter(dm.test_dataloader()))
    assert tb["lr"].shape == (1, 3, 16, 16) and tb["hr"].shape == (1, 3, 64, 64)


def test_render_samples_tool(tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    env = {**os.environ, "MPLBACKEND": "Agg", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(
        [sys.executable, str(REPO / "tools" / "render_samples.py"), "--split", "test", "--n", "2", "--out",
         str(out), "--size", "64", "--scene-size", "64"],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO, check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert out.is_file() and Image.open(out).size[0] > 100


def test_clean_prob_is_a_training_only_schedule() -> None:
    """clean_prob=1 removes noise and JPEG from training batches; validation/test batches keep their degradation."""
    from ssr_lightning.data import SRDataModule
    from ssr_lightning.degradation import DegradationConfig

    dm = SRDataModule(num_train=4, num_val=2, num_test=2, embedded_scene_size=64, patch_size=32, val_size=32,
                      batch_size=4, degradation=DegradationConfig(clean_prob=1.0))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    train = dm.degrade(dict(batch), training=True)
    evaluation = dm.degrade(dict(batch))
    assert torch.all(train["noise_sigma"] == 0)
    assert torch.all(evaluation["noise_sigma"] > 0)
    assert torch.equal(train["kernel"], evaluation["kernel"])  # same blur draw: only noise/JPEG differ
