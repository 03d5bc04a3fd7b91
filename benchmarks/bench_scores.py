"""Which escalation score is best (issue 5): on the digits test split, accuracy when
escalating 10%, 20% and 30% of requests by each score (max_prob, margin, entropy, learned)
against a random router (baseline) and the oracle (escalate exactly the requests the cloud
would fix first), reported as the share of the oracle's gain recovered.

The cloud answers are the demo cloud model re-ranking the edge's top-4 (as the default
policy sends). The learned score is cross-fitted: trained on one half of the split and
scored on the other (even/odd indices), so every reported number is held out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.stats import record

MODELS = Path(os.environ.get("EDGEROUTE_MODELS", "models"))
RATES = (0.10, 0.20, 0.30)
TOP_K = 4


def _data() -> tuple[list[dict[str, float]], list[list[tuple[str, float]]], Any, Any]:
    """Per request: scores, edge top-k; and arrays edge_ok, cloud_ok."""
    from cloud_service.model import CloudModel
    from edgeroute.demo_models import build_demo_bundles, bundles_present, load_test_split
    from router.candidates import top_k
    from router.scores import all_scores
    from router.wire import RerankItem, RerankResult
    from runtime.onnx_model import OnnxModel

    if not bundles_present(MODELS):
        build_demo_bundles(MODELS)
    x, y = load_test_split(MODELS)
    edge = OnnxModel.load(MODELS / "edge" / "digits")
    cloud = CloudModel.load(MODELS / "cloud" / "digits")
    probs = edge.predict(x).probs
    truth = [str(int(v)) for v in y]
    scores, tops, items = [], [], []
    for i, p in enumerate(probs.tolist()):
        cands = top_k(p, edge.labels, TOP_K)
        scores.append(all_scores(p))
        tops.append([(c.label, c.score) for c in cands])
        items.append(
            RerankItem(
                task="digits",
                request_id=f"b-{i}",
                inputs=x[i].tolist(),
                candidates=[c.label for c in cands],
            )
        )
    answers = [r.label if isinstance(r, RerankResult) else "" for r in cloud.rerank(items)]
    edge_ok = np.array([t[0][0] == y_ for t, y_ in zip(tops, truth, strict=True)])
    cloud_ok = np.array([a == y_ for a, y_ in zip(answers, truth, strict=True)])
    return scores, tops, edge_ok, cloud_ok


def _learned(
    scores: list[dict[str, float]], tops: list[list[tuple[str, float]]], edge_ok: Any
) -> Any:
    from router.learned_score import fit_learned_score

    out = np.zeros(len(scores))
    idx = np.arange(len(scores))
    for train, test in ((idx % 2 == 0, idx % 2 == 1), (idx % 2 == 1, idx % 2 == 0)):
        rows = [(scores[i], tops[i]) for i in idx[train]]
        model = fit_learned_score(rows, edge_ok[train].tolist())
        out[test] = model.score_many([(scores[i], tops[i]) for i in idx[test]])
    return out


def accuracy_at(conf: Any, edge_ok: Any, cloud_ok: Any, rate: float) -> float:
    """Accuracy when the `rate` share of requests with the lowest confidence escalate."""
    k = round(rate * len(conf))
    esc = np.zeros(len(conf), dtype=bool)
    esc[np.argsort(conf, kind="stable")[:k]] = True
    return float(np.where(esc, cloud_ok, edge_ok).mean())


def main() -> list[dict[str, Any]]:
    """Print the table and return one record per (score, rate)."""
    scores, tops, edge_ok, cloud_ok = _data()
    n = len(scores)
    confs = {
        name: np.array([s[name] for s in scores]) for name in ("max_prob", "margin", "entropy")
    }
    confs["learned"] = _learned(scores, tops, edge_ok)
    gain = cloud_ok.astype(float) - edge_ok.astype(float)
    base = float(edge_ok.mean())
    print(f"digits test split: {n} requests; edge {base:.4f}, cloud {cloud_ok.mean():.4f}")
    print(f"{'score':<10}" + "".join(f"  acc@{int(r * 100)}%  share" for r in RATES))
    records: list[dict[str, Any]] = []
    rows: dict[str, list[tuple[float, float]]] = {}
    for rate in RATES:
        k = round(rate * n)
        oracle = base + float(np.sort(gain)[::-1][:k].sum()) / n
        random = base + rate * float(gain.mean())
        rows.setdefault("random", []).append((random, _share(random, base, oracle)))
        rows.setdefault("oracle", []).append((oracle, 1.0))
        for name, conf in confs.items():
            acc = accuracy_at(conf, edge_ok, cloud_ok, rate)
            share = _share(acc, base, oracle)
            rows.setdefault(name, []).append((acc, share))
    for name, vals in rows.items():
        print(f"{name:<10}" + "".join(f"  {a:8.4f} {s:6.1%}" for a, s in vals))
    print("share = (accuracy - edge-only) / (oracle - edge-only): the oracle's gain recovered")
    for i, rate in enumerate(RATES):
        random_acc = rows["random"][i][0]
        for name in confs:
            acc, share = rows[name][i]
            records.append(
                record(
                    f"score_{name}_at_{int(rate * 100)}pct",
                    acc,
                    random_acc,
                    "accuracy > random router",
                    "accuracy",
                    acc > random_acc,
                    ratio=share,
                )
            )
    return records


def _share(acc: float, base: float, oracle: float) -> float:
    return (acc - base) / (oracle - base) if oracle > base else 0.0


if __name__ == "__main__":
    main()
