"""What-if simulation, threshold calibration and the policy tools on synthetic logs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_node.observe.decision_log import DecisionLog, DecisionRecord, sync_record
from edgeroute.cli_policy import policy
from edgeroute.policy_log import load_requests
from router.calibration import (
    LoggedRequest,
    candidate_thresholds,
    choose,
    simulate,
    threshold_curve,
)
from router.errors import PolicyError
from router.policy_loader import parse_policy, replace_task_threshold
from router.wire import WireCandidate

POLICY = """\
# yaml-language-server: $schema=./schema.json
version: 1
queue: {max_items: 100, max_bytes: 1048576, on_full: reject}
cost:
  price_per_call: 0.5
tasks:
  digits:
    edge_bundle: /b
    threshold: 0.5   # escalate below this
"""


def _reqs(n: int = 100) -> list[LoggedRequest]:
    """Scores 0.00..0.99; the edge is wrong below 0.3; the cloud is always right and its
    answer is logged only below 0.5 (what a run at threshold 0.5 logs)."""
    out = []
    for i in range(n):
        s = i / n
        out.append(
            LoggedRequest(
                request_id=f"r{i}",
                task="digits",
                ts=1000.0 + i,
                scores={"margin": s},
                edge_label="1" if s >= 0.3 else "7",
                cloud_label="1" if s < 0.5 else None,
                true_label="1",
            )
        )
    return out


def test_simulate_routes_costs_and_accuracy() -> None:
    """At threshold 0.5, 50 of 100 escalate, cost 25, all answers right, nothing estimated."""
    sim = simulate(parse_policy(POLICY), _reqs())
    assert sim.routes == {"cloud/below_threshold": 50, "edge/confident": 50}
    assert (sim.escalated, sim.cloud_calls, sim.cost) == (50, 50, 25.0)
    assert sim.accuracy == 1.0 and sim.estimated == 0


def test_simulate_replays_budgets_in_log_order() -> None:
    """A 10-calls/hour budget lets the first 10 escalations through, then answers locally."""
    text = POLICY.replace("price_per_call: 0.5", "price_per_call: 0.5\n  daily_calls: 10")
    sim = simulate(parse_policy(text), _reqs())
    assert sim.routes["cloud/below_threshold"] == 10
    assert sim.routes["edge/budget_exhausted"] == 40
    assert sim.cost == 5.0
    assert sim.accuracy == pytest.approx(0.8)  # edge wrong on r10..r29


def test_simulate_decides_as_the_live_path_does() -> None:
    """Simulation uses the live rules: a `send: nothing` task never escalates whatever its
    confidence, and a budget that rejects shows as rejected (not scored)."""
    private = POLICY.replace("threshold: 0.5", "threshold: 0.5\n    send: nothing")
    sim = simulate(parse_policy(private), _reqs())
    assert sim.routes == {"edge/privacy_edge_only": 100}
    assert (sim.escalated, sim.cloud_calls) == (0, 0)
    rejecting = POLICY.replace(
        "price_per_call: 0.5",
        "price_per_call: 0.5\n  daily_calls: 10\n  on_budget_exhausted: reject",
    )
    sim = simulate(parse_policy(rejecting), _reqs())
    assert sim.routes["rejected/budget_exhausted"] == 40
    assert sim.scored == 60


def test_unknown_cloud_answers_are_estimated_and_counted() -> None:
    """Escalating requests the log never escalated uses an estimate and says so."""
    text = POLICY.replace("threshold: 0.5", "threshold: 0.8")
    sim = simulate(parse_policy(text), _reqs())
    assert sim.estimated == 30
    assert sim.accuracy == 1.0  # cloud right on every known answer, both edge cases


def test_curve_and_choice_match_simulation() -> None:
    """The chosen threshold for 20% escalation escalates exactly 20% in simulation."""
    reqs = _reqs()
    curve = threshold_curve(reqs, "margin", 0.5)
    c = choose(curve, "digits", "margin", target_escalation=0.2)
    assert c.escalation == pytest.approx(0.2)
    assert c.cost_per_1k == pytest.approx(100.0)
    pol = parse_policy(POLICY.replace("threshold: 0.5", f"threshold: {c.threshold!r}"))
    assert simulate(pol, reqs).escalation_rate == pytest.approx(0.2)
    acc = choose(curve, "digits", "margin", target_accuracy=1.0)
    assert acc.escalation == pytest.approx(0.3)  # the oracle point: every wrong edge answer
    cheap = choose(curve, "digits", "margin", budget_per_1k=50.0)
    assert cheap.escalation == pytest.approx(0.1)
    with pytest.raises(ValueError, match="exactly one"):
        choose(curve, "digits", "margin")


def test_candidate_thresholds_split_scores_exactly() -> None:
    """Each candidate lies strictly above one score and at or below the next."""
    scores = np.array([0.1, 0.1000004, 0.35, 0.9])
    cands = candidate_thresholds(scores)
    assert cands[0] == 0.0 and cands[-1] == 1.0
    counts = [int((scores < t).sum()) for t in cands]
    assert counts == [0, 1, 2, 3, 4]


def test_replace_threshold_keeps_comments() -> None:
    """Only the threshold value changes; the comment and every other line stay."""
    out = replace_task_threshold(POLICY, "digits", 0.25)
    assert "    threshold: 0.25   # escalate below this\n" in out
    assert out.replace("0.25", "0.5") == POLICY
    with pytest.raises(PolicyError):
        replace_task_threshold(POLICY, "nope", 0.2)


def _write_log(directory: Path) -> None:
    with DecisionLog(directory, background=False) as log:
        for r in _reqs():
            cand = (WireCandidate(label=r.edge_label, score=0.9),)
            log.write(
                DecisionRecord(
                    ts=r.ts,
                    request_id=r.request_id,
                    task=r.task,
                    policy_revision="rev",
                    model_version="m",
                    scores=dict(r.scores),
                    edge_candidates=cand,
                    route="cloud" if r.cloud_label else "edge",
                    reason="below_threshold" if r.cloud_label else "confident",
                    cloud_label=r.cloud_label,
                    latency_ms=1.0,
                )
            )
        log.write(
            sync_record(
                ts=2000.0,
                request_id="r60",
                task="digits",
                reason="synced",
                edge_candidates=(WireCandidate(label="1", score=0.9),),
                cloud_label="1",
                cloud_candidates=(WireCandidate(label="1", score=0.99),),
                model_version="c",
                policy_revision="rev",
            )
        )


def test_log_reader_joins_sync_records_and_labels(tmp_path: Path) -> None:
    """A sync record supplies the cloud answer of its request; labels come from the file."""
    _write_log(tmp_path / "decisions")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"r0": "7"}))
    reqs = {r.request_id: r for r in load_requests(tmp_path / "decisions", labels)}
    assert len(reqs) == 100
    assert reqs["r60"].cloud_label == "1" and reqs["r61"].cloud_label is None
    assert reqs["r0"].true_label == "7" and reqs["r1"].true_label is None


def test_cli_simulate_diff_calibrate(tmp_path: Path) -> None:
    """simulate prints routes/escalation/cost/accuracy; calibrate writes plot and policy;
    diff counts route changes between the two."""
    _write_log(tmp_path / "decisions")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({f"r{i}": "1" for i in range(100)}))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text("{}")
    pol = tmp_path / "p.yaml"
    pol.write_text(POLICY.replace("/b", "./b"))
    log = ["--log", str(tmp_path / "decisions"), "--labels", str(labels)]
    run = CliRunner().invoke
    out = run(policy, ["simulate", "--policy", str(pol), *log])
    assert out.exit_code == 0, out.output
    assert "cloud/below_threshold" in out.output and "escalation rate 50.0%" in out.output
    assert "cost 25 USD" in out.output and "expected accuracy 100.00%" in out.output

    new, plot = tmp_path / "new.yaml", tmp_path / "c.png"
    args = ["calibrate", "--policy", str(pol), *log, "--target-escalation", "0.2"]
    out = run(policy, [*args, "--plot", str(plot), "--write-policy", str(new)])
    assert out.exit_code == 0, out.output
    assert "escalation 20.0%" in out.output
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert "# escalate below this" in new.read_text()

    out = run(policy, ["diff", str(pol), str(new), *log])
    assert out.exit_code == 0, out.output
    assert "30 of 100 requests change route" in out.output
    assert "cloud/below_threshold -> edge/confident" in out.output
    assert "-15" in out.output  # cost 25 -> 10


def test_learned_score_ranks_wrong_answers_lower() -> None:
    """Trained where the edge is wrong exactly when margin < 0.3, the learned score puts
    every wrong answer below every right one; too few wrong examples is an error."""
    from router.learned_score import fit_learned_score

    reqs = _reqs()
    rows = [(dict(r.scores), [(r.edge_label, 0.5)]) for r in reqs]
    right = [r.edge_label == r.true_label for r in reqs]
    model = fit_learned_score(rows, right)
    conf = model.score_many(rows)
    wrong = ~np.array(right)
    assert conf[wrong].max() < conf[~wrong].min()
    assert all(0.0 <= c <= 1.0 for c in conf)
    with pytest.raises(ValueError, match="at least 2"):
        fit_learned_score(rows[:40], [False] * 39 + [True])


def test_cloud_answers_of_synced_items_come_from_the_result_store(tmp_path: Path) -> None:
    """A queued request's final cloud answer in the node's result store fills its
    cloud_label (so the what-if tools need not estimate it)."""
    from edge_node.storage.result_store import ResultStore

    _write_log(tmp_path / "decisions")
    store = ResultStore(tmp_path / "results")
    store.put_done("r70", {"task": "digits", "label": "4"})
    store.put_failed("r71", "boom")
    store.close()
    reqs = {
        r.request_id: r for r in load_requests(tmp_path / "decisions", None, tmp_path / "results")
    }
    assert reqs["r70"].cloud_label == "4"
    assert reqs["r71"].cloud_label is None
    assert reqs["r60"].cloud_label == "1"  # the sync record still wins


def test_cli_learn_score_compares_held_out_and_writes_a_file(tmp_path: Path) -> None:
    """learn-score prints each score's held-out accuracy at 10/20/30% and writes a file
    that from_json reads back."""
    from router.learned_score import from_json

    _write_log(tmp_path / "decisions")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({f"r{i}": "1" for i in range(100)}))
    out_file = tmp_path / "learned.json"
    args = ["--log", str(tmp_path / "decisions"), "--labels", str(labels), "--task", "digits"]
    out = CliRunner().invoke(policy, ["learn-score", *args, "--out", str(out_file)])
    assert out.exit_code == 0, out.output
    assert "learned " in out.output and "margin" in out.output
    assert from_json(out_file.read_text()).labels == ("1", "7")
