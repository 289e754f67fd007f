"""`data.eval_split`: `ssr test` / `ssr predict` score the validation split (to choose settings) or the test split;
the real photos have disjoint validation and test photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ssr_lightning.data import SRDataModule
from ssr_lightning.data.datasets import DataError, SRPatchDataset
from ssr_lightning.data.photos import PHOTO_SPLITS, PHOTOS, RealPhotos, photo_paths


def _eval_items(**kwargs) -> list[dict]:
    dm = SRDataModule(**kwargs)
    dm.setup("test")
    return [item for batch in dm.test_dataloader() for item in _unbatch(batch)]


def _unbatch(batch: dict) -> list[dict]:
    n = len(batch["name"])
    return [{k: (v[i] if isinstance(v, (torch.Tensor, list)) and len(v) == n else v) for k, v in batch.items()}
            for i in range(n)]


def test_default_is_the_test_split() -> None:
    names = [it["name"] for it in _eval_items(num_test=3, test_size=64, test_batch_size=2)]
    assert len(names) == 3 and all(int(n[5:10]) % 10 == 9 for n in names)


def test_val_split_scores_num_val_scenes_cropped_like_the_test_ones() -> None:
    items = _eval_items(eval_split="val", num_val=5, num_test=3, test_size=64, val_size=128, test_batch_size=2)
    assert len(items) == 5
    assert all(int(it["name"][5:10]) % 10 == 8 for it in items), "validation scenes are ids 8 mod 10"
    assert all(tuple(it["hr"].shape) == (3, 64, 64) for it in items), "cropped by test_size, not val_size"
    whole = _eval_items(eval_split="val", num_val=2, test_size=0, test_batch_size=1)
    assert tuple(whole[0]["hr"].shape) == (3, 256, 256), "test_size 0 keeps whole scenes"


def test_val_items_degrade_as_in_training_validation() -> None:
    dm = SRDataModule(eval_split="val", num_val=4, val_size=64, test_size=64, val_batch_size=4, test_batch_size=4)
    dm.setup("fit")
    dm.setup("test")
    val = next(iter(dm.val_dataloader()))
    ev = next(iter(dm.test_dataloader()))
    assert val["name"] == ev["name"]
    assert torch.equal(val["seed"], ev["seed"]) and torch.equal(val["hr"], ev["hr"])
    assert torch.equal(dm.degrade(val)["lr"], dm.degrade(ev)["lr"])


def test_test_and_val_scenes_are_disjoint() -> None:
    test = {it["name"] for it in _eval_items(num_test=24, test_size=32, test_batch_size=8)}
    val = {it["name"] for it in _eval_items(eval_split="val", num_val=24, test_size=32, test_batch_size=8)}
    assert len(test) == len(val) == 24 and not test & val


def test_bad_eval_split_is_a_data_error() -> None:
    with pytest.raises(DataError, match="eval_split"):
        SRDataModule(eval_split="train")  # type: ignore[arg-type]


def test_folder_val_split_reads_val_root(tmp_path) -> None:
    for sub, n in (("tr", 2), ("va", 3), ("te", 1)):
        (tmp_path / sub).mkdir()
        for i in range(n):
            Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(tmp_path / sub / f"{sub}{i}.png")
    kwargs = dict(dataset="folder", train_root=str(tmp_path / "tr"), test_root=str(tmp_path / "te"), test_size=32,
                  patch_size=32, val_size=32)
    assert [it["name"] for it in _eval_items(**kwargs)] == ["te0.png"]
    assert len(_eval_items(**kwargs, val_root=str(tmp_path / "va"), eval_split="val")) == 3
    with pytest.raises(DataError, match="data.val_root"):
        _eval_items(**kwargs, eval_split="val")


# --- photos -------------------------------------------------------------------------------------------------------
def test_photo_splits_are_disjoint_and_cover_every_photo() -> None:
    val, test = set(PHOTO_SPLITS["val"]), set(PHOTO_SPLITS["test"])
    assert val and test and not val & test and val | test == set(range(len(PHOTOS)))
    assert not set(photo_paths("val")) & set(photo_paths("test"))
    assert set(photo_paths("val")) | set(photo_paths("test")) == set(photo_paths("all"))


def test_a_photo_degrades_alike_in_its_split_and_in_all() -> None:
    if not photo_paths("test") or not photo_paths("val"):
        pytest.skip("the packaged photos are not installed")
    everything = SRPatchDataset(RealPhotos(64, 4, variants=2, split="all"), "test", None, 4)
    by_name = {everything[i]["name"]: everything[i] for i in range(len(everything))}
    for split, wrap in (("test", "test"), ("val", "val")):
        part = SRPatchDataset(RealPhotos(64, 4, variants=2, split=split), wrap, None, 4)
        for i in range(len(part)):
            item = part[i]
            ref = by_name[item["name"]]
            assert item["seed"] == ref["seed"] and torch.equal(item["depth"], ref["depth"])
            assert torch.equal(item["hr"], ref["hr"]) and "seed_key" not in item


def test_datamodule_photos_val_and_test_share_no_source() -> None:
    if not photo_paths("test") or not photo_paths("val"):
        pytest.skip("the packaged photos are not installed")
    kw = dict(dataset="photos", test_size=0, test_batch_size=1, embedded_scene_size=64)
    test = {it["source"] for it in _eval_items(**kw)}
    val = {it["source"] for it in _eval_items(**kw, eval_split="val")}
    assert test and val and not test & val
    with pytest.raises(DataError, match="evaluation set"):
        SRDataModule(dataset="photos").setup("fit")
