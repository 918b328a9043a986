"""How long staging takes to find an unchanged local folder already staged (issue 15's P2: <= 0.3 s).

    .venv/bin/python bench/restage_local.py [--files 10000] [--repeat 5]

Generates a folder of N/2 images and N/2 labels plus data.yaml under a temporary directory,
stages it once (cold), then times ``stage_from_params`` again ``--repeat`` times in this process
(no interpreter start-up: the figure is staging's own) and prints the cold time and the warm median.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from tasks.params import load_params
from tasks.stage import stage_from_params

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="trainyard-restage-") as tmp:
        root = Path(tmp) / "data"
        image = next((REPO / "data" / "demo" / "images" / "train").iterdir()).read_bytes()
        half = args.files // 2
        for split, n in (("train", half * 4 // 5), ("val", half - half * 4 // 5)):
            (root / "images" / split).mkdir(parents=True)
            (root / "labels" / split).mkdir(parents=True)
            for i in range(n):
                (root / "images" / split / f"{i:05d}.png").write_bytes(image)
                (root / "labels" / split / f"{i:05d}.txt").write_text("0 0.5 0.5 0.1 0.1\n")
        (root / "data.yaml").write_text(
            yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/val", "names": {0: "a"}})
        )
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["data"]["source"] = str(root)
        params["stage"]["root"] = str(Path(tmp) / "stage")
        (Path(tmp) / "params.yaml").write_text(yaml.safe_dump(params))
        loaded = load_params(str(Path(tmp) / "params.yaml"), ())
        start = time.perf_counter()
        staged = stage_from_params(loaded)
        cold = time.perf_counter() - start
        warm = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            again = stage_from_params(loaded)
            warm.append(time.perf_counter() - start)
            assert again.reused and again.md5 == staged.md5
        print(
            f"{staged.files} files: cold {cold:.2f} s; unchanged, staged again: median {statistics.median(warm):.3f} s of {[round(w, 3) for w in warm]}"
        )


if __name__ == "__main__":
    main()
