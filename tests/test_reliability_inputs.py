"""Reliability of image inputs and of `ssr sr` (issue 23, items 3, 4, 10, 11, 12, 13): each case asserts the message a
user gets, the exit status and that nothing they gave or produced was lost. Tiny untrained models, seconds each."""

from __future__ import annotations

import builtins
import hashlib
import random
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from test_diffusion import _save_ckpt, tiny_module
from test_svkr import CODE, K, S, _kernels, _make_svkr, _save_stage

from ssr_lightning.cli import sr as sr_cli
from ssr_lightning.cli.sr import build_parser
from ssr_lightning.cli.sr import main as sr_main
from ssr_lightning.cli.sr_inputs import collect_inputs
from ssr_lightning.cli.sr_output_names import (
    check_output_name,
    check_outputs,
    outputs_of,
    plan_outputs,
)
from ssr_lightning.data import DataError
from ssr_lightning.data.datasets import scan_images
from ssr_lightning.data.image_io import (
    ImageReadError,
    ImageReadWarning,
    ImageTooLargeError,
    load_image,
    read_size,
)
from ssr_lightning.inference.pipeline import SSRPipeline

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--steps", "1", "--tile", "0"]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _png(path: Path, h: int = 12, w: int = 10, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)
    return path


def _declaring(path: Path, w: int, h: int) -> Path:
    """A small PNG whose header declares ``w x h`` (8x8 of data, IHDR rewritten with a valid CRC)."""
    _png(path, 8, 8)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def _sr(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = sr_main(args)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny untrained checkpoints: an LR-only diffusion model, one that needs SVKR (+ its KE, NBSR, DE), and a
    space-to-depth model whose tiles must be at least 8 LR px."""
    from ssr_lightning.degradation.blur import KernelBasis
    from ssr_lightning.diffusion import LatentDiffusionSR, LossConfig, SamplingConfig
    from ssr_lightning.modules import DepthModule, DKENetModule, NBSRModule
    from ssr_lightning.modules.diffusion_module import SSRDiffusionModule
    from ssr_lightning.networks import DepthNet, DKENet, KernelConditionedSR

    d = tmp_path_factory.mktemp("ck")
    torch.manual_seed(0)
    out = {"lr_only": _save_ckpt(tiny_module(use_depth=False, use_kernel=False), d / "lr_only.ckpt"),
           "full": _save_ckpt(tiny_module(), d / "full.ckpt")}
    nbsr = NBSRModule(KernelConditionedSR(channels=16, num_blocks=2, growth=8, code_channels=CODE, scale=S,
                                          kernel_size=K))
    nbsr.model.codec.set_basis(KernelBasis.fit(_kernels(64, torch.Generator().manual_seed(0)), CODE), torch.ones(CODE))
    for name, m in (("ke", DKENetModule(DKENet(channels=8, kernel_size=K, scale=S, use_depth=True))), ("nbsr", nbsr),
                    ("de", DepthModule(DepthNet(channels=16, blocks_per_level=1)))):
        out[name] = _save_stage(m, d / f"{name}.ckpt")
    s2d = SSRDiffusionModule(
        LatentDiffusionSR(autoencoder="space_to_depth", autoencoder_config={"factor": 4}, unet_config={
            "block_out_channels": (8, 16, 16), "down_block_types": ("DownBlock2D",) * 3,
            "up_block_types": ("UpBlock2D",) * 3, "layers_per_block": 1, "use_kernel": False, "use_depth": False,
            "amf_hidden": 8, "map_width": 8, "map_out": 8}),
        sampling=SamplingConfig(steps=2), loss=LossConfig(ema_decay=0.9))
    out["s2d"] = _save_ckpt(s2d.eval(), d / "s2d.ckpt")
    return out


def _svkr_args(ckpts: dict[str, Path]) -> list[str]:
    return ["--ckpt", str(ckpts["full"]), "--dkenet-ckpt", str(ckpts["ke"]), "--nbsr-ckpt", str(ckpts["nbsr"]),
            "--depth-ckpt", str(ckpts["de"])]


# --- 3, 4: one output-naming rule ------------------------------------------------------------------------------------
def test_same_name_in_two_folders_gets_two_outputs(tmp_path: Path, ckpts, capsys) -> None:
    _png(tmp_path / "d1" / "a.png", seed=1)
    _png(tmp_path / "d2" / "a.png", seed=2)
    before = _digest(tmp_path)
    code, err = _sr([str(tmp_path / "d1"), str(tmp_path / "d2"), "-o", str(tmp_path / "out"),
                     "--ckpt", str(ckpts["lr_only"]), *FAST], capsys)
    assert code == 0 and "2/2 images" in err and "named apart" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_d1.png", "a_d2.png"]
    assert {k: v for k, v in _digest(tmp_path).items() if not k.startswith("out")} == before


def test_save_maps_never_overwrite_another_inputs_output(tmp_path: Path, ckpts, capsys) -> None:
    _png(tmp_path / "in" / "a.png", seed=1)
    _png(tmp_path / "in" / "a_depth.png", seed=2)
    before = _digest(tmp_path / "in")
    code, err = _sr([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--save-maps", *_svkr_args(ckpts), *FAST],
                    capsys)
    assert code == 0 and "2/2 images" in err
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(written) == 8, written  # 2 inputs x (SR + depth + kernel variance + npz): nothing overwritten
    assert written == sorted(d.name for f in ("a_png", "a_depth_png")
                             for d in outputs_of(tmp_path / "out" / f"{f}.png", True))
    assert _digest(tmp_path / "in") == before


STEMS = ["a", "A", "a_depth", "a_kernel_var", "a_maps", "a_png", "a_jpg", "a_d1", "a_1", "a_d1_png", "b",
         "b_depth_depth", "b_maps_kernel_var"]
EXTS = [".png", ".jpg", ".PNG", ".tif"]
FOLDERS = ["d1", "d2", "x/d1", "."]
OUTS = ["out", "d1", "d1/out", "x/d1", "x/out", "o.png"]


def test_output_naming_rule_property(tmp_path: Path) -> None:
    """Seeded random input sets: every input gets its own outputs (maps included), distinct ignoring case, and the
    check refuses exactly the plans where an output is an input or exists."""
    rng = random.Random(23)
    refused = 0
    for case in range(300):
        root = tmp_path / f"c{case}"
        chosen: list[Path] = []
        for _ in range(rng.randint(1, 7)):
            f = root / rng.choice(FOLDERS) / (rng.choice(STEMS) + rng.choice(EXTS))
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(b"")
            chosen.append(f)
        args: list[str] = []
        for f in chosen:  # a file itself, or its folder (sometimes both: read once)
            args += [str(f)] if rng.random() < 0.4 else [str(f.parent)] + ([str(f)] if rng.random() < 0.2 else [])
        if rng.random() < 0.2:  # an earlier result where an output may go
            earlier = root / rng.choice(["out", "x/out"]) / (rng.choice(STEMS[:4]) + rng.choice(["", "_png"]) + ".png")
            earlier.parent.mkdir(parents=True, exist_ok=True)
            earlier.write_bytes(b"earlier")
        files, _ = collect_inputs(args)
        assert len({f.resolve() for f in files}) == len(files)
        output, save_maps = root / rng.choice(OUTS), rng.random() < 0.6
        folder_given = any(Path(a).is_dir() for a in args)
        if check_output_name(output, files, folder_given):
            assert folder_given or len(files) > 1
            continue
        plan = plan_outputs(files, output, len(files) == 1 and not folder_given, save_maps)
        assert set(plan) == set(files)
        targets = [str(t).casefold() for dst in plan.values() for t in outputs_of(dst, save_maps)]
        assert len(targets) == len(set(targets)), (case, args, plan)
        inputs = {f.resolve() for f in files}
        hits = [t for dst in plan.values() for t in outputs_of(dst, save_maps) if t.resolve() in inputs]
        exists = [t for dst in plan.values() for t in outputs_of(dst, save_maps) if t.exists()]
        problem = check_outputs(plan, files, save_maps, overwrite=False)
        if hits:
            assert problem and "one of the inputs" in problem
        elif exists:
            assert problem and "already exist" in problem
        else:
            assert problem is None
        refused += problem is not None
    assert 0 < refused < 150  # both kinds of case were drawn


# --- 10: inputs read as a viewer shows them, or with a word ---------------------------------------------------------
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_a_viewer_does(tmp_path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _png(tmp_path / "x.png", 6, 10)
    Image.open(path).save(path, exif=exif.tobytes())
    with Image.open(path) as im:
        shown = np.asarray(ImageOps.exif_transpose(im)).astype(np.float32) / 255.0
    np.testing.assert_array_equal(load_image(path), shown)


def test_sr_output_follows_exif_orientation(tmp_path: Path, ckpts, capsys) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 20 wide x 12 high, shown rotated: 12 wide x 20 high
    (tmp_path / "in").mkdir()
    Image.open(_png(tmp_path / "src.png", 12, 20)).save(tmp_path / "in" / "rot.jpg", exif=exif.tobytes())
    code, _ = _sr([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ckpt", str(ckpts["lr_only"]), *FAST], capsys)
    assert code == 0 and Image.open(tmp_path / "out" / "rot.png").size == (12 * 4, 20 * 4)


def test_float_tiffs_by_range_and_nan_is_an_error(tmp_path: Path, ckpts, capsys) -> None:
    data = np.random.default_rng(0).random((12, 10)).astype(np.float32)
    (tmp_path / "in").mkdir()
    Image.fromarray(data * 255.0, mode="F").save(tmp_path / "in" / "f255.tif")
    with pytest.warns(ImageReadWarning, match=r"read as 0-255 data \(divided by 255\)"):
        np.testing.assert_allclose(load_image(tmp_path / "in" / "f255.tif")[..., 0], data, atol=1e-6)
    nan = data.copy()
    nan[2:4, 2:4] = np.nan
    Image.fromarray(nan, mode="F").save(tmp_path / "in" / "fnan.tif")
    Image.fromarray(data * 1e6, mode="F").save(tmp_path / "huge.tif")
    with pytest.raises(ImageReadError, match="fit no image range"):
        load_image(tmp_path / "huge.tif")
    rgb = np.random.default_rng(1).random((12, 10, 3)).astype(np.float32)  # float RGB: Pillow cannot, OpenCV can
    cv2.imwrite(str(tmp_path / "rgb255.tif"), rgb[..., ::-1] * 255.0)
    with pytest.warns(ImageReadWarning, match="divided by 255"):
        np.testing.assert_allclose(load_image(tmp_path / "rgb255.tif"), rgb, atol=1e-6)
    assert read_size(tmp_path / "rgb255.tif") == (10, 12)  # ssr sr's header check takes it too
    rgb[0, 0, 0] = np.inf
    cv2.imwrite(str(tmp_path / "rgbinf.tif"), rgb)
    with pytest.raises(ImageReadError, match="rgbinf.tif': 1 of 360 pixel values are NaN or infinite"):
        load_image(tmp_path / "rgbinf.tif")
    before = _digest(tmp_path / "in")
    code, err = _sr([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ckpt", str(ckpts["lr_only"]), *FAST], capsys)
    assert code == 1 and "1/2 images" in err
    assert "fnan.tif': 4 of 120 pixel values are NaN or infinite" in err and "NOTE image" in err and "f255.tif" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["f255.png"] and _digest(tmp_path / "in") == before


def test_frames_and_skipped_folder_entries_are_reported(tmp_path: Path, ckpts, capsys) -> None:
    rgb = [Image.open(_png(tmp_path / f"f{i}.png", seed=i)) for i in range(3)]
    (tmp_path / "in").mkdir()
    rgb[0].convert("P").save(tmp_path / "in" / "anim.gif", save_all=True, append_images=[f.convert("P") for f in rgb[1:]])
    rgb[0].save(tmp_path / "in" / "pages.tif", save_all=True, append_images=rgb[1:])
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    (tmp_path / "in" / "sub").mkdir()
    code, err = _sr([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ckpt", str(ckpts["lr_only"]), *FAST], capsys)
    assert code == 0 and "2/2 images" in err and "2 skipped" in err
    assert "notes.txt (not an image extension (.txt))" in err and "sub (a folder" in err
    assert "anim.gif': 3 frames" in err and "pages.tif': 3 frames" in err and "only the first is used" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["anim.png", "pages.png"]
    first = np.asarray(rgb[0].convert("P").convert("RGB"), dtype=np.float32) / 255.0
    with pytest.warns(ImageReadWarning, match="3 frames"):
        np.testing.assert_allclose(load_image(tmp_path / "in" / "anim.gif"), first)


def test_folder_data_sets_report_a_nan_image_before_training(tmp_path: Path) -> None:
    _png(tmp_path / "ok.png", 16, 16)
    nan = np.full((16, 16), np.nan, dtype=np.float32)
    Image.fromarray(nan, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(DataError, match=r"1 unusable train image.*nan.tif': 256 of 256 pixel values are NaN"):
        scan_images([tmp_path / "ok.png", tmp_path / "nan.tif"], scale=4, min_side=None, what="train image")


# --- 11, 13: sizes from the header, before any model loads ------------------------------------------------------------
def test_a_png_declaring_100_mpx_is_refused_before_any_model_loads(tmp_path: Path, capsys, monkeypatch) -> None:
    _declaring(tmp_path / "in" / "huge.png", 10_000, 10_000)
    _declaring(tmp_path / "in" / "bomb.png", 20_000, 20_000)  # above Pillow's own hard limit
    before = _digest(tmp_path / "in")
    monkeypatch.setattr(SSRPipeline, "from_checkpoint", lambda *a, **k: pytest.fail("a model was loaded"))
    code, err = _sr([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ckpt", str(tmp_path / "none.ckpt")],
                    capsys)
    assert code == 1 and "0/2 images" in err and "cannot load" not in err
    assert "huge.png: 10000x10000 = 100,000,000 LR pixels is above --max-pixels 12,000,000" in err
    assert "bomb.png: 20000x20000 = 400,000,000 LR pixels" in err and "about 94.0 GB of memory" in err
    assert "convert it to PNG" not in err and _digest(tmp_path / "in") == before
    with pytest.raises(ImageTooLargeError, match="declares 10000x10000"):
        load_image(tmp_path / "in" / "huge.png")


def test_max_pixels_is_documented_and_the_memory_estimate_printed(tmp_path: Path, ckpts, capsys) -> None:
    text = build_parser().format_help()
    assert "--max-pixels" in text and "12,000,000" in text and "1.3 GB + 0.6 kB per LR pixel" in " ".join(text.split())
    _png(tmp_path / "in" / "a.png", 40, 30)
    code, err = _sr([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ckpt", str(ckpts["lr_only"]), *FAST,
                     "--max-pixels", "1000"], capsys)
    assert code == 1 and "30x40 = 1,200 LR pixels is above --max-pixels 1,000" in err
    code, err = _sr([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ckpt", str(ckpts["lr_only"]), *FAST], capsys)
    assert code == 0 and "memory: about 1.3 GB for the largest input, a.png (30x40 LR px" in err


def test_permission_denied_says_so(tmp_path: Path, ckpts, capsys, monkeypatch) -> None:
    locked = _png(tmp_path / "in" / "locked.png")
    _png(tmp_path / "in" / "ok.png", seed=1)
    locked.chmod(0)
    real_open = builtins.open

    def deny(file, *args, **kw):  # root reads through chmod 0: deny it by hand
        if Path(str(file)) == locked:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kw)

    monkeypatch.setattr(builtins, "open", deny)
    code, err = _sr([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ckpt", str(ckpts["lr_only"]), *FAST],
                    capsys)
    locked.chmod(0o644)
    assert code == 1 and "1/2 images" in err and "locked.png': permission denied. Check its permissions" in err
    assert "convert it" not in err and "corrupt" not in err and (tmp_path / "out" / "ok.png").is_file()


def test_an_unlistable_input_folder_is_a_usage_error(tmp_path: Path, ckpts, capsys, monkeypatch) -> None:
    locked = _png(tmp_path / "locked" / "a.png").parent
    real_iterdir = Path.iterdir

    def deny(self: Path):
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", deny)
    code, err = _sr([str(locked), "-o", str(tmp_path / "out"), "--ckpt", str(ckpts["lr_only"])], capsys)
    assert code == 2 and err == f"ssr sr: cannot list the input folder {locked}: Permission denied; check its permissions\n"
    assert not (tmp_path / "out").exists()


def test_a_tile_too_small_for_the_model_is_a_usage_error_before_loading(tmp_path: Path, ckpts, capsys,
                                                                        monkeypatch) -> None:
    _png(tmp_path / "in" / "a.png", 16, 16)
    args = [str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ckpt", str(ckpts["s2d"]), "--steps", "1"]
    with monkeypatch.context() as m:
        m.setattr(SSRPipeline, "from_checkpoint", lambda *a, **k: pytest.fail("a model was loaded"))
        code, err = _sr([*args, "--tile", "4", "--overlap", "2"], capsys)
        assert code == 2 and "--tile 4: this model needs tiles of at least 8 LR px" in err
        code, err = _sr([*args, "--tile", "10", "--overlap", "9"], capsys)
        assert code == 2 and "--overlap 9 must be smaller than the tile, 8 LR px" in err
    assert not (tmp_path / "out").exists()
    code, err = _sr([*args, "--tile", "8", "--overlap", "4"], capsys)  # the smallest tile it takes works
    assert code == 0 and Image.open(tmp_path / "out" / "a.png").size == (64, 64)


def test_a_file_name_output_with_several_inputs_is_a_usage_error(tmp_path: Path, ckpts, capsys) -> None:
    _png(tmp_path / "in" / "a.png")
    _png(tmp_path / "in" / "b.png", seed=1)
    code, err = _sr([str(tmp_path / "in" / "a.png"), str(tmp_path / "in" / "b.png"), "-o", str(tmp_path / "x.png"),
                     "--ckpt", str(ckpts["lr_only"])], capsys)
    assert code == 2 and "x.png names one file, but there are 2 inputs: give an output folder" in err
    code, err = _sr([str(tmp_path / "in"), "-o", str(tmp_path / "x.png"), "--ckpt", str(ckpts["lr_only"])], capsys)
    assert code == 2 and "x.png names one file, but an input is a folder" in err
    code, err = _sr([str(tmp_path / "in" / "a.png"), "-o", str(tmp_path / "x.jpg"), "--ckpt", str(ckpts["lr_only"])],
                    capsys)
    assert code == 2 and "ssr sr writes PNG files; name the output x.png" in err
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.jpg").exists()


def test_svkr_shows_progress_per_stage(tmp_path: Path, ckpts, capsys) -> None:
    calls: list[tuple[str, int]] = []
    _make_svkr(iterations=2)(torch.rand(1, 3, 12, 12), on_stage=lambda name, t: calls.append((name, t)))
    assert calls == [(n, t) for t in range(3) for n in ("DE", "KE", "NBSR")]
    _png(tmp_path / "in" / "a.png")
    code, err = _sr([str(tmp_path / "in"), "-o", str(tmp_path / "out"), *_svkr_args(ckpts), *FAST], capsys)
    assert code == 0 and "SVKR DE t=0/3" in err and "SVKR KE t=2/3" in err and "SVKR NBSR t=3/3" in err


# --- 12: Ctrl-C ----------------------------------------------------------------------------------------------------
def _small_bands(call):
    """The pipeline's output in bands of 8 rows (so an image's file is written in several pieces)."""

    def banded(self, lr, sampling=None, out=None):
        if out is None:
            return call(self, lr, sampling)
        pending = []
        result = call(self, lr, sampling, out=lambda a, band: pending.append((a, band)))
        for a, band in pending:
            for k in range(0, band.shape[-2], 8):
                out(a + k, band[..., k : k + 8, :])
        return result

    return banded


def test_ctrl_c_stops_in_one_line_keeping_finished_outputs(tmp_path: Path, ckpts, capsys, monkeypatch) -> None:
    for i in range(3):
        _png(tmp_path / "in" / f"im{i}.png", seed=i)
    before = _digest(tmp_path / "in")
    real, calls = sr_cli.PNGStream.write, []

    def interrupted_mid_write(self, rows) -> None:  # the SR file is written band by band into a temporary file
        real(self, rows)
        self.fh.flush()
        calls.append(self.fh.name)
        if len(calls) == 2 and self.rows < self.height:
            raise KeyboardInterrupt  # Ctrl-C while the second image's file is half written
        if self.rows < self.height:
            calls.pop()

    monkeypatch.setattr(sr_cli.PNGStream, "write", interrupted_mid_write)
    monkeypatch.setattr(SSRPipeline, "__call__", _small_bands(SSRPipeline.__call__))
    code, err = _sr([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ckpt", str(ckpts["lr_only"]), *FAST], capsys)
    assert code == 130 and "Traceback" not in err
    assert [ln for ln in err.splitlines() if "interrupted" in ln] == [
        f"ssr sr: interrupted (Ctrl-C): 1/3 images written to {tmp_path / 'out'} and kept; no partial file left"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["im0.png"]  # no temporary file either
    Image.open(tmp_path / "out" / "im0.png").verify()
    assert _digest(tmp_path / "in") == before


def test_ctrl_c_while_models_load_leaves_no_empty_folder(tmp_path: Path, ckpts, capsys, monkeypatch) -> None:
    _png(tmp_path / "in" / "a.png")

    def interrupt(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(SSRPipeline, "from_checkpoint", interrupt)
    code, err = _sr([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ckpt", str(ckpts["lr_only"])], capsys)
    assert code == 130 and "interrupted (Ctrl-C): 0/1 images written" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()

