"""The pure rollout core (router/rollout.py): the rollout file's strict schema with located
errors, stable stage membership that only grows, and the gate that judges a stage on ML
signals of the new release's nodes against the old release's."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.errors import RolloutError
from router.rollout import (
    HISTOGRAM_BINS,
    ArmStats,
    Gates,
    Stage,
    Step,
    judge,
    parse_rollout,
    position,
    psi,
    reached,
    step,
)

GOOD = """\
version: 1
name: digits-r7
release: 7
cohort: {site: berlin}
stages:
  - {percent: 5, soak_s: 600, min_nodes: 2, min_requests: 500}
  - {percent: 50, soak_s: 600}
  - {percent: 100, soak_s: 0}
on_breach: abort
"""


def test_a_rollout_file_parses_into_its_stages_and_default_gates() -> None:
    """A valid file gives the stages in order, the cohort and the default gates."""
    rollout = parse_rollout(GOOD)
    assert [s.percent for s in rollout.stages] == [5, 50, 100]
    assert rollout.cohort == {"site": "berlin"} and rollout.gates == Gates()
    assert rollout.stages[0].min_nodes == 2 and rollout.stages[1].min_requests == 100


@pytest.mark.parametrize(
    ("change", "where", "message"),
    [
        (("min_nodes: 2", "min_node: 2"), "r.yaml:6:31: stages.0.min_node", "did you mean"),
        (("on_breach: abort", "on_breach: stop"), "r.yaml:9:1: on_breach", "'pause' or 'abort'"),
        (("percent: 50,", "percent: 3,"), "r.yaml:5:1: stages:", "must grow strictly"),
        (("percent: 100,", "percent: 90,"), "r.yaml:5:1: stages:", "must reach 100 percent"),
        (("release: 7", "release: 0"), "r.yaml:3:1: release", "greater than or equal to 1"),
        (
            ("name: digits-r7", "name: ../x"),
            "r.yaml:2:1: name",
            "rollout name '../x' may only contain",
        ),
    ],
)
def test_rollout_errors_name_the_line_field_and_what_is_allowed(
    change: tuple[str, str], where: str, message: str
) -> None:
    """Each mistake is a RolloutError whose issue names the place and what is allowed."""
    with pytest.raises(RolloutError) as err:
        parse_rollout(GOOD.replace(*change), source="r.yaml")
    text = str(err.value)
    assert where in text and message in text, text
    assert err.value.code == "invalid_rollout"


def test_positions_are_stable_uniform_and_differ_between_rollouts() -> None:
    """A node's position is the same every time, spread evenly over [0, 100), and another
    rollout puts the nodes in another order."""
    nodes = [f"node-{i}" for i in range(4000)]
    a = [position("r1", n) for n in nodes]
    assert a == [position("r1", n) for n in nodes]
    assert all(0 <= p < 100 for p in a)
    assert 350 <= sum(p < 10 for p in a) <= 450  # about 10 %
    b = [position("r2", n) for n in nodes]
    first_a = {n for n, p in zip(nodes, a, strict=True) if p < 5}
    first_b = {n for n, p in zip(nodes, b, strict=True) if p < 5}
    assert len(first_a & first_b) < len(first_a) / 2


@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=50, unique=True))
def test_a_later_stage_reaches_every_node_an_earlier_one_did(node_ids: list[str]) -> None:
    """Stages only grow: a node reached by stage k is reached by every later stage, and
    nodes outside the cohort are never reached."""
    rollout = parse_rollout(GOOD)
    for node in node_ids:
        hits = [reached(rollout, k, node, {"site": "berlin"}) for k in range(3)]
        assert hits == sorted(hits)  # False... then True...
        assert hits[-1]
        assert not any(reached(rollout, k, node, {"site": "paris"}) for k in range(3))


def _arm(**kw: object) -> ArmStats:
    base: dict[str, object] = {
        "nodes": 3,
        "requests": 1000,
        "escalations": 100,
        "compared": 100,
        "agreed": 95,
        "errors": 1,
        "p95_latency_ms": 10.0,
        "confidence": (0, 0, 0, 0, 10, 20, 30, 100, 300, 540),
    }
    return ArmStats(**{**base, **kw})  # type: ignore[arg-type]


STAGE = Stage(percent=10, soak_s=600, min_nodes=2, min_requests=500)


def test_a_stage_waits_for_nodes_requests_and_soak_then_advances() -> None:
    """Too few nodes or requests, or a soak not over, is `wait` (saying what it awaits);
    a healthy stage after its soak is `advance` with the gate values it measured."""
    old = _arm()
    assert judge(STAGE, Gates(), _arm(nodes=1), old, 900).waiting_for == "1 of 2 nodes reporting"
    few = _arm(requests=400, escalations=40, compared=40, agreed=38)
    assert judge(STAGE, Gates(), few, old, 900).waiting_for == "400 of 500 requests"
    unsure = judge(STAGE, Gates(), _arm(compared=5, agreed=5), old, 900)
    assert unsure.waiting_for == "5 of 20 escalations compared with the cloud"
    soaking = judge(STAGE, Gates(), _arm(), old, 100)
    assert (soaking.verdict, soaking.waiting_for) == ("wait", "soak 100 of 600 s")
    done = judge(STAGE, Gates(), _arm(), old, 600)
    assert done.verdict == "advance" and done.values["agreement_drop"] == 0.0
    assert set(done.values) >= {"escalation_rate_increase", "p95_latency_ratio", "confidence_psi"}


@pytest.mark.parametrize(
    ("new", "gate"),
    [
        ({"escalations": 200}, "escalation_rate_increase"),
        ({"agreed": 60}, "agreement_drop"),
        ({"errors": 40}, "error_rate_increase"),
        ({"p95_latency_ms": 30.0}, "p95_latency_ratio"),
        ({"confidence": (540, 300, 100, 30, 20, 10, 0, 0, 0, 0)}, "confidence_psi"),
    ],
)
def test_each_gate_breaches_on_its_signal_before_the_soak_ends(
    new: dict[str, object], gate: str
) -> None:
    """A new release that escalates more, agrees less with the cloud, fails more, is
    slower or shifts its confidence breaches that gate, without waiting for the soak."""
    outcome = judge(STAGE, Gates(), _arm(**new), _arm(), soaked_s=5)
    assert outcome.verdict == "breach"
    assert [b.split()[0] for b in outcome.breaches] == [gate]
    assert gate in outcome.values


def test_min_agreement_applies_without_an_old_side_and_other_gates_are_skipped() -> None:
    """With no node left on the old release only `min_agreement` can judge agreement."""
    no_old = ArmStats(nodes=0, requests=0)
    gates = Gates(min_agreement=0.9)
    assert judge(STAGE, gates, _arm(agreed=80), no_old, 900).breaches == ("agreement 0.8 < 0.9",)
    assert judge(STAGE, gates, _arm(), no_old, 900).verdict == "advance"


def test_step_moves_on_completes_pauses_or_aborts() -> None:
    """advance moves to the next stage and completes after the last; a breach does what
    `on_breach` says; a wait stays."""
    rollout = parse_rollout(GOOD)
    go, stop, wait = (judge(STAGE, Gates(), a, _arm(), t) for a, t in (
        (_arm(), 900), (_arm(errors=300), 900), (_arm(), 1)))  # fmt: skip
    assert (step(rollout, 0, go).action, step(rollout, 0, go).stage) == ("advance", 1)
    assert step(rollout, 2, go).action == "complete"
    assert step(rollout, 1, stop).action == "abort"
    paused = parse_rollout(GOOD.replace("on_breach: abort", "on_breach: pause"))
    assert step(paused, 1, stop).action == "pause"
    assert step(rollout, 1, wait).action == "stay"


def test_psi_is_zero_for_one_shape_and_grows_with_the_shift() -> None:
    """Equal shapes (at any scale) give 0; a bigger shift gives a bigger index; histograms
    with different bin counts are refused."""
    base = [1] * HISTOGRAM_BINS
    assert psi(base, [5] * HISTOGRAM_BINS) == pytest.approx(0.0)
    small = [2, *([1] * (HISTOGRAM_BINS - 1))]
    big = [20, *([1] * (HISTOGRAM_BINS - 1))]
    assert 0 < psi(small, base) < psi(big, base)
    with pytest.raises(ValueError, match="differ in bins"):
        psi([1, 2], [1, 2, 3])


def test_evidence_comes_first_and_gates_set_to_null_are_off() -> None:
    """A breaching new side with too few nodes is still `wait` (no values); a gate set to
    null is neither checked nor recorded; a breach keeps the rollout at its stage."""
    bad = _arm(errors=300)
    assert judge(STAGE, Gates(), _arm(nodes=1, errors=300), _arm(), 900).values == {}
    assert judge(STAGE, Gates(), bad, _arm(), 900).verdict == "breach"
    off = Gates(max_error_rate_increase=None)
    outcome = judge(STAGE, off, bad, _arm(), 900)
    assert outcome.verdict == "advance" and "error_rate_increase" not in outcome.values
    rollout = parse_rollout(GOOD)
    assert step(rollout, 1, judge(STAGE, Gates(), bad, _arm(), 900)) == Step("abort", 1)


def test_a_value_exactly_at_its_limit_passes() -> None:
    """Values are compared as recorded (6 decimals): an escalation rate up by exactly the
    limit (0.55 - 0.50, not exact in binary) is no breach."""
    old = _arm(escalations=500, compared=100)
    new = _arm(escalations=550, compared=100)
    outcome = judge(STAGE, Gates(), new, old, 900)
    assert outcome.values["escalation_rate_increase"] == 0.05 and outcome.verdict == "advance"


def test_an_old_side_without_requests_skips_the_comparisons() -> None:
    """Old nodes that answered nothing give no rates to compare: those gates are skipped."""
    outcome = judge(STAGE, Gates(), _arm(), ArmStats(nodes=2, requests=0), 900)
    assert outcome.verdict == "advance"
    assert not {"escalation_rate_increase", "error_rate_increase", "agreement_drop"} & set(
        outcome.values
    )


def test_impossible_stats_and_stages_are_refused() -> None:
    """More agreements than comparisons, negative counts, a histogram of the wrong size
    and a stage the rollout does not have raise ValueError."""
    for bad in ({"agreed": 101}, {"errors": -1}, {"confidence": (1, 2)}):
        with pytest.raises(ValueError):
            _arm(**bad)
    rollout = parse_rollout(GOOD)
    with pytest.raises(ValueError, match="stages 0-2"):
        reached(rollout, 3, "n", {"site": "berlin"})
    with pytest.raises(ValueError, match="stages 0-2"):
        step(rollout, -1, judge(STAGE, Gates(), _arm(), _arm(), 900))


def test_environment_references_are_not_read_in_a_rollout(monkeypatch: pytest.MonkeyPatch) -> None:
    """`${VAR}` in a rollout is an error even if the variable is set (the file alone says
    what rolls out); `${VAR:-default}` takes its default."""
    monkeypatch.setenv("EDGEROUTE_TEST_ROLLOUT_NAME", "from-env")
    with pytest.raises(RolloutError, match="EDGEROUTE_TEST_ROLLOUT_NAME is referenced"):
        parse_rollout(GOOD.replace("digits-r7", "${EDGEROUTE_TEST_ROLLOUT_NAME}"))
    named = parse_rollout(GOOD.replace("digits-r7", "${EDGEROUTE_TEST_ROLLOUT_NAME:-r8}"))
    assert named.name == "r8"
