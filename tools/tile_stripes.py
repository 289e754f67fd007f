"""Stripes at diffusion tile edges: gradient energy in bands at tile borders against the rest of the image.

    TORCH_HOME=$(realpath tests/assets/torch_hub) OMP_NUM_THREADS=1 python tools/tile_stripes.py \\
        --results ablations/results/diffusion_default --cells CELL_ID [CELL_ID ...] \\
        --tiles 0 32/8 64/16 96/24 128/32 --split val --out results/tiles/stripes.json [--grid results/tiles/grid.png]

Each cell is a finished ``ssr-ablate`` cell of a diffusion row (its ``ssr`` checkpoint and the front end it was scored
with: DKENet, NBSR, DepthNet); the models sample with their own settings (start, strength, steps), only the tiles
change (``0`` = untiled; ``--strength`` sets every model's strength). Images: the real photos of ``--split``
(``data.photos``; ``val`` to choose, ``test`` to check afterwards), whole, longer side ``--size`` HR px,
``--variants`` kernel draws each, degraded as the data sets degrade (noise and JPEG on), super-resolved as ``ssr sr``
does (``SSRPipeline``: SVKR once on the whole LR image, step-fused tiles; SVKR's maps are computed once per image and
shared by every model and tile setting).

Measures, on the 8-bit output (mean over RGB of |I[y+1] − I[y]|, averaged along the row; columns alike):

- ``border``: rows within ±1 LR px of an inner tile edge (a tile's first or last row, image borders excluded);
- ``offset``: LR rows 14–18 inside every tile from each of its edges (where the tiny model's stripe sat, issue 12:
  15 LR rows below a tile's top; untiled, the image is one tile, so this is the untiled stripe at LR rows 14–18);
- ``rest``: every other row, 2 LR px away from the image borders.

A band's ratio is its mean |∇| over ``rest``'s (1.0 = no excess); the same ratios of HR and of the front end's I_T
(which has no tiles) say what the image content alone gives in those rows. ``peak``: the largest row (column) value
over the median, and its LR row, as issue 12 measured. PSNR-Y (8-bit, 4 px border) against HR per image.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssr_lightning.diffusion.config import SamplingConfig  # noqa: E402
from ssr_lightning.ablate.provenance import add_overwrite_flag, environment, refuse_overwrite  # noqa: E402
from ssr_lightning.files import atomic_write_text  # noqa: E402
from ssr_lightning.diffusion.tiling import TileGrid  # noqa: E402
from ssr_lightning.inference.pipeline import SSRPipeline  # noqa: E402
from ssr_lightning.inference.svkr import SVKRConfig  # noqa: E402
from ssr_lightning.metrics import psnr_y  # noqa: E402

OFFSET = (14, 18)  # LR rows inside a tile, from each edge, where the stripe sat (issue 12)


def parse_tile(text: str) -> tuple[int, int]:
    """``"64/16"`` → (64, 16); ``"0"`` → untiled."""
    tile, _, overlap = text.partition("/")
    return int(tile), int(overlap or 0)


def bands(size_lr: int, tile: int, overlap: int, multiple: int, scale: int) -> dict[str, np.ndarray]:
    """Boolean masks over the ``size·s − 1`` row differences of one axis: ``border``, ``offset``, ``rest``."""
    n = size_lr * scale - 1
    border, offset, edge = (np.zeros(n, bool) for _ in range(3))
    spans = [(0, size_lr)]
    padded = -(-size_lr // multiple) * multiple  # the pipeline pads the LR image at the bottom/right to the multiple
    if tile and tile < padded:
        grid = TileGrid(padded, padded, tile, overlap, multiple)
        spans = sorted({(t.y0, min(t.y0 + t.h, size_lr)) for t in grid})
    for a, b in spans:
        for e in (a, b):
            if 0 < e < size_lr:  # an inner tile edge: the difference between HR rows s·e − 1 and s·e is at s·e − 1
                border[max(0, scale * (e - 1)): scale * (e + 1)] = True
        offset[scale * (a + OFFSET[0]): scale * (a + OFFSET[1] + 1)] = True
        offset[max(0, scale * (b - OFFSET[1] - 1)): scale * (b - OFFSET[0])] = True
    edge[: 2 * scale] = edge[n - 2 * scale:] = True
    offset &= ~border
    return {"border": border & ~edge, "offset": offset & ~edge, "rest": ~(border | offset | edge)}


def profiles(img: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean |∇| per row difference and per column difference of an image ``(1, 3, H, W)`` in [0, 1], on 8 bit."""
    q = torch.round(img.clamp(0, 1) * 255.0)[0].double()
    rows = (q[:, 1:, :] - q[:, :-1, :]).abs().mean(dim=(0, 2)).numpy()
    cols = (q[:, :, 1:] - q[:, :, :-1]).abs().mean(dim=(0, 1)).numpy()
    return rows, cols


def stripe_stats(img: torch.Tensor, tile: int, overlap: int, multiple: int, scale: int) -> dict[str, float]:
    """Band ratios and peaks of one image for one tiling (see the module doc)."""
    out: dict[str, float] = {}
    h, w = img.shape[-2] // scale, img.shape[-1] // scale
    for axis, prof, size in zip(("row", "col"), profiles(img), (h, w), strict=True):
        m = bands(size, tile, overlap, multiple, scale)
        rest = float(prof[m["rest"]].mean())
        for band in ("border", "offset"):
            out[f"{band}_{axis}"] = float(prof[m[band]].mean()) / rest if m[band].any() else float("nan")
        inner = prof[2 * scale: -2 * scale]
        k = int(inner.argmax())
        out[f"peak_{axis}"] = float(inner[k] / np.median(inner))
        out[f"peak_{axis}_lr"] = (k + 2 * scale + 1) / scale  # LR position of the difference's lower row
    return out


class _SharedSVKR:
    """SVKR whose result is computed once per input image (every model and tiling of an image reads the same maps,
    as they would in separate ``ssr sr`` runs: SVKR is deterministic)."""

    def __init__(self, svkr: Any) -> None:
        self.svkr, self.iterations, self.cache = svkr, svkr.iterations, {}

    def eval(self) -> _SharedSVKR:
        return self

    def to(self, device: Any) -> _SharedSVKR:
        return self

    def __call__(self, lr: torch.Tensor, **kwargs: Any) -> Any:
        key = (tuple(lr.shape), float(lr.double().sum()), float((lr.double() ** 2).sum()))
        if key not in self.cache:
            self.cache = {key: self.svkr(lr, **{k: v for k, v in kwargs.items() if k == "keep_all"})}
        return self.cache[key]


def photo_batches(split: str, size: int, variants: int) -> list[dict[str, Any]]:
    """Degraded whole photos of ``split`` (``size`` HR px on the longer side), one per batch."""
    from ssr_lightning.data import SRDataModule

    dm = SRDataModule(dataset="photos", eval_split=split, embedded_scene_size=size, test_size=0, test_batch_size=1)
    dm.setup("test")
    ds = dm.test_dataloader().dataset
    ds.base.variants = variants
    return [dm.degrade(b) for b in dm.test_dataloader()]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ssr_lightning.ablate.execute import Layout

    layout = Layout(args.results)
    tiles = [parse_tile(t) for t in args.tiles]
    batches = photo_batches(args.split, args.size, args.variants)
    record: dict[str, Any] = {"tool": "tools/tile_stripes.py", "split": args.split, "size": args.size,
                              "variants": args.variants, "tiles": args.tiles, "offset_rows": list(OFFSET),
                              "images": [b["name"][0] for b in batches], "models": {}}
    shared: _SharedSVKR | None = None
    outputs: dict[str, dict[str, torch.Tensor]] = {}
    for cell in args.cells:
        stages = layout.trained_stages(cell)
        pipe = SSRPipeline.from_checkpoint(str(stages["ssr"]), svkr=SVKRConfig(
            dkenet_ckpt=str(stages["dkenet"]), nbsr_ckpt=str(stages["nbsr"]), depth="learned",
            depth_ckpt=str(stages["depth"]), iterations=3, gamma=0.9))
        if shared is None:
            shared = _SharedSVKR(pipe.svkr)
        pipe.svkr = shared  # type: ignore[assignment]
        s, q = pipe.scale, pipe.multiple
        if args.strength is not None:
            pipe.sampling = pipe.sampling.replace(strength=args.strength)
        per: dict[str, Any] = {"sampling": dataclasses.asdict(pipe.sampling), "per_image": {}}
        for b in batches:
            name, lr, hr = b["name"][0], b["lr"], b["hr"]
            rows: dict[str, Any] = {}
            for tile, overlap in tiles:
                sampling: SamplingConfig = pipe.sampling.replace(tile=tile, overlap=overlap)
                sr = pipe(lr, sampling).sr
                key = f"{tile}/{overlap}" if tile else "0"
                rows[key] = {"psnr_y": float(psnr_y(sr, hr, crop_border=s, quantize=True)),
                             **stripe_stats(sr, tile, overlap, q, s)}
                outputs.setdefault(f"{cell}|{key}", {})[name] = sr
            # what the content alone gives in the same bands: HR and the front end's I_T (no tiles)
            i_t = shared.cache[next(iter(shared.cache))].final[2][..., : hr.shape[-2], : hr.shape[-1]].cpu()
            outputs.setdefault("I_T", {})[name], outputs.setdefault("HR", {})[name] = i_t, hr
            rows["_ref"] = {k if k else "0": {"hr": stripe_stats(hr, *t, q, s), "frontend": stripe_stats(i_t, *t, q, s)}
                            for k, t in ((f"{t[0]}/{t[1]}" if t[0] else "", t) for t in tiles)}
            per["per_image"][name] = rows
            print(f"{cell} {name}: " + ", ".join(f"{k} {v['psnr_y']:.2f} dB b{v['border_row']:.2f}/o{v['offset_row']:.2f}"
                                                 for k, v in rows.items() if k != "_ref"), flush=True)
        per["summary"] = summarize(per["per_image"])
        record["models"][cell] = per
    record["_outputs"] = outputs
    return record


def summarize(per_image: dict[str, Any]) -> dict[str, Any]:
    """Mean over images per tiling: each measure of the output, and the HR / I_T references of the bands."""
    out: dict[str, Any] = {}
    keys = [k for k in next(iter(per_image.values())) if k != "_ref"]
    for k in keys:
        vals = [img[k] for img in per_image.values()]
        out[k] = {m: float(np.nanmean([v[m] for v in vals])) for m in vals[0]}
        for ref in ("hr", "frontend"):
            refs = [img["_ref"][k][ref] for img in per_image.values()]
            out[k][ref] = {m: float(np.nanmean([v[m] for v in refs])) for m in refs[0] if not m.endswith("_lr")}
        out[k]["worst_excess"] = max(abs(out[k][f"{b}_{a}"] - 1.0) for b in ("border", "offset") for a in ("row", "col")
                                     if not np.isnan(out[k][f"{b}_{a}"]))
    return out


def draw_grid(record: dict[str, Any], outputs: dict[str, dict[str, torch.Tensor]], path: Path, lr_rows: int) -> None:
    """Crops (the top ``lr_rows`` LR rows, 256 HR px wide, from the first photo) of every model × tiling, I_T and HR;
    tile edges ticked in red on the left, the stripe rows (14–18 LR px inside each tile) in blue."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name, s = record["images"][0], 4
    tiles = [parse_tile(t) for t in record["tiles"]]
    models = list(record["models"])
    fig, axes = plt.subplots(len(models) + 1, len(tiles), figsize=(2.6 * len(tiles), 2.6 * (len(models) + 1)),
                             squeeze=False)

    def show(ax: Any, img: torch.Tensor, title: str, tile: int, overlap: int) -> None:
        h = min(img.shape[-2], s * lr_rows)
        x0 = max(0, img.shape[-1] // 2 - 128)
        crop = img[0, :, :h, x0: x0 + 256].permute(1, 2, 0).clamp(0, 1).numpy()
        ax.imshow(crop, interpolation="nearest")
        m = bands(img.shape[-2] // s, tile, overlap, 4, s)
        for band, colour in (("border", "red"), ("offset", "blue")):
            ys = np.flatnonzero(m[band][: h - 1])
            ax.plot(np.full(len(ys), -6), ys, ls="none", marker="s", ms=1.2, color=colour, clip_on=False)
        ax.set_xlim(-10, crop.shape[1])
        ax.set_title(title, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])

    for j, (tile, overlap) in enumerate(tiles):
        key = f"{tile}/{overlap}" if tile else "0"
        for i, cell in enumerate(models):
            show(axes[i, j], outputs[f"{cell}|{key}"][name], f"{cell[:34]}\ntiles {key}", tile, overlap)
        ref = outputs["I_T"][name] if j % 2 == 0 else outputs["HR"][name]
        show(axes[-1, j], ref, f"{'front end I_T' if j % 2 == 0 else 'HR'} (bands of tiles {key})", tile, overlap)
    fig.suptitle(f"{name}: top {lr_rows} LR rows; red = tile edges, blue = LR rows 14-18 inside each tile", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, metadata={"Software": None})
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="ablations/results/diffusion_default", help="the ssr-ablate results folder")
    p.add_argument("--cells", nargs="+", required=True, help="finished cells of diffusion rows (their checkpoints)")
    p.add_argument("--tiles", nargs="+", default=["0", "32/8", "64/16", "96/24", "128/32"])
    p.add_argument("--split", choices=["val", "test"], default="val", help="which photos (data.photos splits)")
    p.add_argument("--size", type=int, default=1024, help="HR longer side of the photos")
    p.add_argument("--variants", type=int, default=2, help="kernel draws per photo")
    p.add_argument("--strength", type=float, default=None,
                   help="sample every model at this strength (default: each checkpoint's recorded sampling, which "
                        "is the config it was trained with, not necessarily the strength its study row scores)")
    p.add_argument("--out", required=True, help="JSON record")
    p.add_argument("--grid", default=None, help="PNG: the top rows of the first photo, every model × tiling, tile "
                   "edges ticked on the left (red) and the stripe rows (blue)")
    p.add_argument("--grid-rows", type=int, default=80, help="LR rows of the grid's crops (from the top)")
    add_overwrite_flag(p)
    args = p.parse_args(argv)
    refuse_overwrite(p, args.overwrite, args.out, args.grid)
    torch.set_grad_enabled(False)
    record = run(args)
    outputs = record.pop("_outputs")
    record["command"] = "python tools/tile_stripes.py " + " ".join(sys.argv[1:] if argv is None else argv)
    record["what"] = "gradient energy at diffusion tile borders and stripe rows against the rest of the image"
    record["provenance"] = environment()
    atomic_write_text(args.out, json.dumps(record, indent=1, sort_keys=True) + "\n")
    if args.grid:
        draw_grid(record, outputs, Path(args.grid), args.grid_rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
