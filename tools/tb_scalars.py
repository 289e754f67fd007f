"""Print the scalars of TensorBoard run folders as a table: `python tools/tb_scalars.py runs/dkenet/version_0 [TAG ...]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series of one run folder: tag -> [(step, value), ...]."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dirs", nargs="+", help="run folders (runs/<name>/version_N)")
    parser.add_argument("--tags", nargs="*", default=None, help="tags to show (default: all)")
    parser.add_argument("--last", type=int, default=5, help="show the last N points of each series")
    args = parser.parse_args()
    for run in args.run_dirs:
        print(f"== {run}")
        for tag, series in sorted(read_scalars(run).items()):
            if args.tags and tag not in args.tags:
                continue
            pts = ", ".join(f"{s}:{v:.4g}" for s, v in series[-args.last :])
            print(f"  {tag:28s} {pts}")


if __name__ == "__main__":
    main()
