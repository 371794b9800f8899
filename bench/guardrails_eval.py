"""How well the guardrails' detectors find what they look for, on labelled sets the repo
ships (`bench/data/guardrails/` and its `holdout/`, written without looking at the
detectors; see their READMEs): per structured PII type, precision and recall over
labelled spans (a found span is right when it overlaps a labelled one of its type; exact
boundaries reported apart);
for secrets, the share of texts holding a credential that are caught and the share of
ordinary ones flagged.

    .venv/bin/python bench/guardrails_eval.py
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from inferplane.guardrails.pii import STRUCTURED, find_pii  # noqa: E402
from inferplane.guardrails.secrets import find_secrets  # noqa: E402

DATA = ROOT / "bench" / "data" / "guardrails"


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pii(folder: Path) -> None:
    rows = _lines(folder / "pii.jsonl")
    tp, fp, fn, exact = Counter[str](), Counter[str](), Counter[str](), Counter[str]()
    started = time.perf_counter()
    for row in rows:
        text = str(row["text"])
        gold = [(s["type"], s["start"], s["end"]) for s in row["spans"]]  # type: ignore[attr-defined]
        found = [(f.type, f.start, f.end) for f in find_pii(text, frozenset(STRUCTURED))]
        matched: set[int] = set()
        for kind, start, end in found:
            hit = next(
                (
                    i
                    for i, (k, s, e) in enumerate(gold)
                    if k == kind and i not in matched and start < e and s < end
                ),
                None,
            )
            if hit is None:
                fp[kind] += 1
                continue
            matched.add(hit)
            tp[kind] += 1
            exact[kind] += (start, end) == gold[hit][1:]
        for i, (kind, _, _) in enumerate(gold):
            if i not in matched:
                fn[kind] += 1
    took = (time.perf_counter() - started) / len(rows) * 1000
    print(f"structured PII: {len(rows)} texts, {sum((tp + fn).values())} labelled values")
    print(f"  {'type':<14} {'labelled':>8} {'precision':>9} {'recall':>7} {'exact':>6}")
    for kind in STRUCTURED:
        labelled = tp[kind] + fn[kind]
        precision = tp[kind] / (tp[kind] + fp[kind]) if tp[kind] + fp[kind] else 1.0
        recall = tp[kind] / labelled if labelled else 1.0
        share = exact[kind] / tp[kind] if tp[kind] else 1.0
        print(f"  {kind:<14} {labelled:>8} {precision:>9.3f} {recall:>7.3f} {share:>6.2f}")
    total_tp, total_fp = sum(tp.values()), sum(fp.values())
    print(
        f"  overall precision {total_tp / max(1, total_tp + total_fp):.3f}, recall "
        f"{total_tp / max(1, total_tp + sum(fn.values())):.3f}; {took:.2f} ms a text "
        "(aim: >= 0.95 both, per type)"
    )


def secrets(folder: Path) -> None:
    rows = _lines(folder / "secrets.jsonl")
    caught = Counter[tuple[bool, bool]]()
    started = time.perf_counter()
    for row in rows:
        caught[bool(row["secret"]), bool(find_secrets(str(row["text"])))] += 1
    took = (time.perf_counter() - started) / len(rows) * 1000
    positives = caught[True, True] + caught[True, False]
    negatives = caught[False, True] + caught[False, False]
    print(f"secrets: {positives} texts with a credential, {negatives} without")
    print(
        f"  recall {caught[True, True] / max(1, positives):.3f}, false positives "
        f"{caught[False, True] / max(1, negatives):.3f}; {took:.2f} ms a text "
        "(aim: recall >= 0.95, false positives <= 0.02)"
    )


def injection() -> None:
    """The prompt-injection detector at its default threshold, on the dev set (used to
    choose the threshold and the training settings) and the held-out set (not used)."""
    from inferplane.guardrails.injection import DEFAULT_THRESHOLD, model

    detector = model()
    for name in ("dev", "holdout"):
        rows = _lines(DATA / "injection" / f"{name}.jsonl")
        started = time.perf_counter()
        caught = [detector.score(str(r["text"])) >= DEFAULT_THRESHOLD for r in rows]
        took = (time.perf_counter() - started) / len(rows) * 1000
        attack = [c for c, r in zip(caught, rows, strict=True) if r["label"] == "attack"]
        benign = [c for c, r in zip(caught, rows, strict=True) if r["label"] == "benign"]
        print(
            f"prompt injection, {name} ({len(attack)} attacks, {len(benign)} benign): detection "
            f"{sum(attack) / len(attack):.3f}, false positives {sum(benign) / len(benign):.3f} "
            f"at {DEFAULT_THRESHOLD}; {took:.2f} ms a text (aim: >= 0.90 at <= 0.05)"
        )


if __name__ == "__main__":
    # The first set was read while the detectors were tuned (a development set); so was
    # the first held-out set's secrets part, once (its PII part was not); the second
    # held-out set was not (see the sets' READMEs and docs/performance.md).
    for label, folder in (
        ("development set", DATA),
        ("held-out set (its secrets read once since)", DATA / "holdout"),
        ("second held-out set", DATA / "holdout2"),
    ):
        if not folder.exists():
            continue
        print(f"== {label} ({folder.relative_to(ROOT)})")
        if (folder / "pii.jsonl").exists():
            pii(folder)
        if (folder / "secrets.jsonl").exists():
            secrets(folder)
    print("== prompt injection (bench/data/guardrails/injection)")
    injection()
