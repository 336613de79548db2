"""The alibi-detect side of bench/detection.py; runs INSIDE the alibi-detect 0.13 venv (numpy<2).

It never imports embmon. It reads what the embmon side wrote into ``--data``:

  manifest.json        p_val, the references, the cases (window file, reference, a torch seed
                       per window), the permutation count for MMDDrift (null: alibi's default)
  ref-<name>.npy       the reference rows of each reference (float32, rows x dim: 64 for
                       the digits, 384 for the text embeddings)
  <case>.npy           the windows of one case (float32, windows x n x dim)

fits one ``KSDrift`` (per-feature two-sample KS, Bonferroni over the features) and one
``MMDDrift`` (Gaussian RBF kernel, bandwidth by the median heuristic on the reference rows,
permutation test; ``backend="pytorch"``, CPU) per reference, both at ``p_val``, calls
``predict`` once per window (timed alone; one untimed call first, so lazy set-up is not
counted), and writes the results as JSON to ``--out``. torch's generator is seeded before each
MMD window with that window's seed, so the permutations, hence the p-values, follow the seed.
Without torch (or with ``--detectors ks``) MMDDrift is skipped and the JSON says why.

usage: python detection_worker.py --data DIR --out FILE [--threads 1] [--detectors ks,mmd]
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np


def _mmd_settings(mmd: Any) -> dict[str, Any]:
    """The permutation count and the kernel bandwidth MMDDrift ended up with (its wrapped
    backend detector's attributes; None where this alibi-detect release names them otherwise)."""
    if mmd is None:
        return {"mmd_permutations": None, "mmd_sigma": None}
    inner = getattr(mmd, "_detector", mmd)
    try:
        sigma = inner.kernel.sigma.detach().cpu().numpy().astype(float).tolist()
    except AttributeError:
        sigma = None
    permutations = getattr(inner, "n_permutations", None)
    return {"mmd_permutations": permutations, "mmd_sigma": sigma}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--detectors", default="ks,mmd")
    args = parser.parse_args()

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    data = Path(args.data)
    manifest = json.loads((data / "manifest.json").read_text())
    p_val = float(manifest["p_val"])
    wanted = set(args.detectors.split(","))

    torch: Any = None
    mmd_skipped = None if "mmd" in wanted else "not asked for (--detectors)"
    if mmd_skipped is None:
        try:
            import torch  # type: ignore[no-redef]

            torch.set_num_threads(args.threads)
        except ImportError as exc:
            torch, mmd_skipped = None, f"torch is not installed in the alibi-detect venv: {exc}"
    from alibi_detect.cd import KSDrift, MMDDrift

    out: dict[str, Any] = {
        "versions": {
            "alibi-detect": md.version("alibi-detect"),
            "numpy": np.__version__,
            "scipy": md.version("scipy"),
            "torch": None if torch is None else torch.__version__,
        },
        "p_val": p_val,
        "mmd_backend": None if mmd_skipped else "pytorch",
        "mmd_skipped": mmd_skipped,
        "threads": args.threads,
        "fit_ms": {},
        "references": {},
        "cases": {},
    }

    detectors: dict[str, dict[str, Any]] = {}
    for name in manifest["references"]:
        x_ref = np.load(data / f"ref-{name}.npy")
        fitted: dict[str, Any] = {}
        start = time.perf_counter()
        fitted["ks"] = KSDrift(x_ref, p_val=p_val)
        fit = {"ks": (time.perf_counter() - start) * 1e3}
        if mmd_skipped is None:
            options: dict[str, Any] = {"backend": "pytorch", "p_val": p_val, "device": "cpu"}
            if manifest["mmd_permutations"] is not None:
                options["n_permutations"] = int(manifest["mmd_permutations"])
            start = time.perf_counter()
            fitted["mmd"] = MMDDrift(x_ref, **options)
            fit["mmd"] = (time.perf_counter() - start) * 1e3
        detectors[name] = fitted
        out["fit_ms"][name] = fit
        out["references"][name] = {
            "rows": int(x_ref.shape[0]),
            "dim": int(x_ref.shape[1]),
            **_mmd_settings(fitted.get("mmd")),
        }

    warmed: set[str] = set()
    for case in manifest["cases"]:
        windows = np.load(data / case["file"])
        fitted = detectors[case["reference"]]
        if case["reference"] not in warmed:  # lazy set-up, imports, first kernels: not timed
            fitted["ks"].predict(windows[0])
            if "mmd" in fitted:
                torch.manual_seed(0)
                fitted["mmd"].predict(windows[0])
            warmed.add(case["reference"])
        ks_rows, mmd_rows = [], []
        for i, x in enumerate(windows):
            start = time.perf_counter()
            ks = fitted["ks"].predict(x)["data"]
            ms = (time.perf_counter() - start) * 1e3
            p_values = np.asarray(ks["p_val"], dtype=np.float64)
            ks_rows.append(
                {
                    "drift": int(ks["is_drift"]),
                    "ms": ms,
                    "p_min": float(p_values.min()),
                    "features_below": int((p_values < ks["threshold"]).sum()),
                    "threshold": float(ks["threshold"]),
                }
            )
            if "mmd" in fitted:
                torch.manual_seed(int(case["seeds"][i]))
                start = time.perf_counter()
                mmd = fitted["mmd"].predict(x)["data"]
                ms = (time.perf_counter() - start) * 1e3
                mmd_rows.append(
                    {
                        "drift": int(mmd["is_drift"]),
                        "ms": ms,
                        "p_val": float(mmd["p_val"]),
                        "mmd2": float(mmd["distance"]),
                        "mmd2_threshold": float(mmd["distance_threshold"]),
                    }
                )
        out["cases"][case["key"]] = {"ks": ks_rows, "mmd": mmd_rows or None}
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
