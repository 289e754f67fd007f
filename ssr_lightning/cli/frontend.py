"""``ssr-frontend``: print and save the blind-SR front-end table (bicubic … NBSR + GT kernel).

    ssr-frontend --dkenet runs/dkenet/version_0/checkpoints/best.ckpt \\
                 --dkenet-nodepth runs/dkenet_nodepth/version_0/checkpoints/best.ckpt \\
                 --nbsr runs/nbsr/version_0/checkpoints/best.ckpt --depth-ckpt runs/depth/version_0/checkpoints/best.ckpt \\
                 --gammas 0.5,0.9,1.0 --iterations 1,3,5 --out results/frontend

Checkpoints left out default to the newest ``runs/<stage>`` run (docs/ARCHITECTURE.md, checkpoint policy). Rows and
their meaning: ``ssr_lightning.ablate.frontend``.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse import ActionConfigFile, ArgumentParser

from ssr_lightning.ablate.frontend import (
    FrontendRow,
    evaluate_frontend,
    format_markdown,
    make_test_batches,
    svkr_gap,
)
from ssr_lightning.files import atomic_write_json, atomic_write_text
from ssr_lightning.inference.checkpoints import load_model, resolve_checkpoint
from ssr_lightning.inference.svkr import SVKR, SVKRConfig

__all__ = ["build_parser", "main", "run"]

_DATA_CONFIG = "configs/data/embedded.yaml"


def _floats(text: str | None, kind: type) -> list[Any]:
    return [kind(x) for x in text.split(",") if x.strip()] if text else []


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="ssr-frontend", description=__doc__.split("\n\n")[0], default_env=False)
    p.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of these options")
    p.add_argument("--dkenet", type=str | None, default=None, help="DKENet (with depth) checkpoint")
    p.add_argument("--dkenet-nodepth", type=str | None, default=None,
                   help="DKENet use_depth=false checkpoint (row skipped if absent)")
    p.add_argument("--nbsr", type=str | None, default=None, help="NBSR checkpoint (GT-kernel trained or fine-tuned on KE)")
    p.add_argument("--depth", type=Literal["gt", "learned", "midas", "dpt"], default="learned", help="DE for SVKR")
    p.add_argument("--depth-ckpt", type=str | None, default=None, help="DE weights (DepthModule ckpt, MiDaS .pt, DPT folder)")
    p.add_argument("--T", dest="T", type=int, default=3, help="SVKR iterations of the main row (paper: 3)")
    p.add_argument("--gamma", type=float, default=0.9, help="SVKR γ of the main row (paper: 0.9)")
    p.add_argument("--gammas", type=str | None, default=None, help="sweep: comma-separated γ values, e.g. 0.5,0.9,1.0")
    p.add_argument("--iterations", type=str | None, default=None, help="sweep: comma-separated T values, e.g. 1,3,5")
    p.add_argument("--data-config", type=str, default=_DATA_CONFIG, help="data fragment of the test split")
    p.add_argument("--test-size", type=int | None, default=None, help="HR test crop (default: the config's val_size)")
    p.add_argument("--batch-size", type=int, default=8, help="test batch size")
    p.add_argument("--limit-batches", type=int | None, default=None, help="evaluate only this many batches")
    p.add_argument("--no-noise", action="store_true", help="diagnosis: test data without additive noise")
    p.add_argument("--no-jpeg", action="store_true", help="diagnosis: test data without JPEG")
    p.add_argument("--out", type=str, default="results/frontend", help="folder for frontend.json/.md")
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``ssr-frontend`` (see :func:`run`)."""
    run(sys.argv[1:] if argv is None else argv)


def run(argv: list[str]) -> list[FrontendRow]:
    """Parse ``argv``, evaluate, print the Markdown table and write ``frontend.json``/``frontend.md``."""
    args = build_parser().parse_args(argv)
    torch.manual_seed(0)
    gammas, iters = _floats(args.gammas, float), _floats(args.iterations, int)
    if bool(gammas) != bool(iters):  # a sweep needs both axes; fill the missing one with the main setting
        gammas, iters = gammas or [args.gamma], iters or [args.T]
    svkr = SVKR.from_config(SVKRConfig(dkenet_ckpt=args.dkenet, nbsr_ckpt=args.nbsr, depth=args.depth,
                                       depth_ckpt=args.depth_ckpt, iterations=args.T, gamma=args.gamma))
    nodepth = load_model(resolve_checkpoint(args.dkenet_nodepth, "dkenet"), "dkenet") if args.dkenet_nodepth else None
    batches, scale = make_test_batches(Path(args.data_config), args.test_size, args.batch_size, args.limit_batches,
                                       noise=not args.no_noise, jpeg=not args.no_jpeg)
    rows = evaluate_frontend(batches, svkr, nodepth, scale=scale, gammas=gammas, iterations=iters, progress=True)
    gap = svkr_gap(rows)
    md = format_markdown(rows, gap)
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"rows": [asdict(r) for r in rows], "svkr_minus_upper_bound": gap,
              "args": {k: str(v) for k, v in vars(args).items()}, "num_samples": rows[0].num_samples}
    atomic_write_json(out / "frontend.json", report)
    atomic_write_text(out / "frontend.md", md + "\n")
    print(f"-> {out / 'frontend.json'}, {out / 'frontend.md'}")
    return rows


if __name__ == "__main__":  # pragma: no cover
    main()
