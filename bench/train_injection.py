"""Train the prompt-injection detector's weights from the labelled set the repo ships
(`bench/data/guardrails/injection/train.jsonl`) into
`src/inferplane/guardrails/data/injection.npz`, and print how it does on the dev set
(the held-out set is for `bench/guardrails_eval.py`, never for choosing settings here).

    .venv/bin/python bench/train_injection.py [--epochs 500] [--rate 50] [--l2 1e-5]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from inferplane.guardrails.injection import Model, train  # noqa: E402

DATA = ROOT / "bench" / "data" / "guardrails" / "injection"
OUT = ROOT / "src" / "inferplane" / "guardrails" / "data" / "injection.npz"


def load(name: str) -> tuple[list[str], list[int]]:
    rows = [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]
    return [r["text"] for r in rows], [int(r["label"] == "attack") for r in rows]


def rates(model: Model, texts: list[str], labels: list[int], threshold: float) -> str:
    scores = [model.score(t) for t in texts]
    caught = [s >= threshold for s in scores]
    attacks = sum(labels)
    hits = sum(c and y for c, y in zip(caught, labels, strict=True))
    false = sum(c and not y for c, y in zip(caught, labels, strict=True))
    benign = max(1, len(labels) - attacks)
    return f"detection {hits / max(1, attacks):.3f}, false positives {false / benign:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=500)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--l2", type=float, default=1e-5)
    args = parser.parse_args()
    texts, labels = load("train.jsonl")
    model = train(texts, labels, epochs=args.epochs, rate=args.rate, l2=args.l2)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, weights=model.weights.astype(np.float16), bias=model.bias)
    model = Model.load(OUT)
    dev_texts, dev_labels = load("dev.jsonl")
    print(f"train: {rates(model, texts, labels, 0.5)}")
    for threshold in (0.5, 0.6, 0.7, 0.8):
        print(f"dev at {threshold}: {rates(model, dev_texts, dev_labels, threshold)}")


if __name__ == "__main__":
    main()
