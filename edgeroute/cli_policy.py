"""`edgeroute policy ...`: check, inspect and try out policy files before they ship.

check / schema / explain work on files alone; simulate / calibrate / diff replay a decision
log (see router.calibration and docs/ops.md).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import click

from router.errors import EdgerouteError, PolicyError
from router.policy import Policy

if TYPE_CHECKING:
    from router.calibration import Choice, Curve, LoggedRequest, SimResult

# ---- policy -----------------------------------------------------------------------------


@click.group()
def policy() -> None:
    """Policy files: check, inspect, simulate and calibrate."""


@policy.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def policy_check(files: tuple[Path, ...]) -> None:
    """Validate policy FILES and every task's edge bundle (the checks the node runs at
    start); print every problem with file:line:column or the task. Exit 1 on errors."""
    from edge_node.lifecycle.active_policy import bundle_problems, load_policy_file

    failed = False
    for path in files:
        try:
            policy, _ = load_policy_file(path)
            problems = bundle_problems(policy, path.parent)
        except FileNotFoundError:
            click.echo(f"{path}: no such file", err=True)
            failed = True
        except OSError as exc:
            click.echo(f"{path}: cannot read: {exc.strerror}", err=True)
            failed = True
        except PolicyError as exc:
            click.echo(str(exc), err=True)
            n = len(exc.issues)
            click.echo(f"{path}: {n} problem{'s' if n != 1 else ''}", err=True)
            failed = True
        else:
            for name, refused in problems:
                click.echo(f"{path}: tasks.{name}.edge_bundle: {refused.message}", err=True)
            if problems:
                n = len(problems)
                click.echo(f"{path}: {n} problem{'s' if n != 1 else ''}", err=True)
                failed = True
            else:
                click.echo(f"{path}: ok")
    sys.exit(1 if failed else 0)


@policy.command("schema")
def policy_schema_cmd() -> None:
    """Print the JSON Schema of policy files (generated from the pydantic models)."""
    from router.policy_loader import policy_schema

    click.echo(schema_text(policy_schema()), nl=False)


def schema_text(schema: dict[str, object]) -> str:
    """The schema as committed in policies/schema.json (sorted keys, 2-space indent)."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


@policy.command("explain")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--task", "task_name", default=None, help="Show only this task (default: all).")
def policy_explain(file: Path, task_name: str | None) -> None:
    """Print the effective policy with every default filled in, and its budgets."""
    import yaml

    from router.budget import limits_for

    pol, revision = _load(file)
    data = pol.model_dump(mode="json")
    if task_name is not None:
        if task_name not in pol.tasks:
            click.echo(f"{file}: no task {task_name!r}; tasks: {', '.join(pol.tasks)}", err=True)
            sys.exit(1)
        data["tasks"] = {task_name: data["tasks"][task_name]}
    click.echo(f"# effective policy of {file} (revision {revision}); every default filled in")
    click.echo(yaml.safe_dump(data, sort_keys=False), nl=False)
    for name in data["tasks"]:
        limits = limits_for(pol.cost, pol.tasks[name], name)
        names = ", ".join(f"{lim.name} <= {lim.limit:g}" for lim in limits) or "none"
        click.echo(f"# budgets a cloud call of {name!r} must fit: {names}")


def _load(file: Path, *, offline: bool = False) -> tuple[Policy, str]:
    """Load and validate a policy file, or print its problems and exit 1 (2 if it cannot
    be read). `offline` tools
    (simulate, diff, calibrate) never call the cloud, so an unset token_env is fine."""
    from edge_node.lifecycle.active_policy import load_policy_file

    try:
        return load_policy_file(file, check_token_env=not offline)
    except OSError as exc:
        click.echo(f"error: {file}: {exc.strerror or exc}", err=True)
        sys.exit(2)
    except PolicyError as exc:
        click.echo(str(exc), err=True)
    sys.exit(1)


# ---- what-if: simulate, diff, calibrate --------------------------------------------------

_LOG = click.option(
    "--log",
    "log",
    required=True,
    type=click.Path(path_type=Path),
    help="Decision log: a data dir's decisions/ folder or a .jsonl file.",
)
_LABELS = click.option(
    "--labels",
    default=None,
    type=click.Path(path_type=Path),
    help='True labels, JSON {"request_id": "label"} (edgeroute demo writes one).',
)


def _requests(log: Path, labels: Path | None) -> list[LoggedRequest]:
    """The logged requests; cloud answers to synced queue items are taken from the node's
    result store next to the log (`<data-dir>/results`) when it is there."""
    from edgeroute.policy_log import load_requests

    results = log.parent / "results" if log.is_dir() else None
    if not log.exists():
        click.echo(
            f"error: {log}: no decision log (a decisions/ folder or a .jsonl file)", err=True
        )
        sys.exit(2)
    try:
        return load_requests(log, labels, results)
    except EdgerouteError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)


def _print_sim(name: str, sim: SimResult, currency: str) -> None:
    click.echo(f"{name}: {sim.requests} requests")
    for key, n in sorted(sim.routes.items()):
        click.echo(f"  {key:<32} {n:6d}  {n / max(1, sim.requests):6.1%}")
    click.echo(f"  escalation rate {sim.escalation_rate:.1%}")
    click.echo(f"  cloud calls {sim.cloud_calls}, cost {sim.cost:.6g} {currency}")
    if sim.accuracy is None:
        click.echo("  accuracy: unknown (no labels and no cloud answers in the log)")
    else:
        note = (
            f" ({sim.estimated} of {sim.scored} cloud answers estimated: partial)"
            if sim.estimated
            else ""
        )
        click.echo(f"  expected accuracy {sim.accuracy:.2%} on {sim.scored} requests{note}")


@policy.command("simulate")
@click.option("--policy", "policy_file", required=True, type=click.Path(path_type=Path))
@_LOG
@_LABELS
def policy_simulate(policy_file: Path, log: Path, labels: Path | None) -> None:
    """Replay a decision log under a policy: routes per reason, escalation rate, cloud
    calls and cost, and expected accuracy where labels or cloud answers are known."""
    from router.calibration import simulate

    pol, _ = _load(policy_file, offline=True)
    _print_sim(str(policy_file), simulate(pol, _requests(log, labels)), pol.cost.currency)


@policy.command("diff")
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@_LOG
@_LABELS
def policy_diff(old: Path, new: Path, log: Path, labels: Path | None) -> None:
    """What changes from OLD to NEW on the logged traffic: requests that change route,
    and the expected change in accuracy and cost."""
    from router.calibration import simulate

    reqs = _requests(log, labels)
    p_old, _ = _load(old, offline=True)
    p_new, _ = _load(new, offline=True)
    a, b = simulate(p_old, reqs), simulate(p_new, reqs)
    changes = Counter(f"{x} -> {y}" for x, y in zip(a.decided, b.decided, strict=True) if x != y)
    n = sum(changes.values())
    click.echo(f"{n} of {a.requests} requests change route ({n / max(1, a.requests):.1%})")
    for key, count in changes.most_common():
        click.echo(f"  {key:<56} {count:6d}")
    click.echo(
        f"escalation rate {a.escalation_rate:.1%} -> {b.escalation_rate:.1%}; cloud calls "
        f"{a.cloud_calls} -> {b.cloud_calls}; cost {a.cost:.6g} -> {b.cost:.6g} "
        f"{p_new.cost.currency} ({b.cost - a.cost:+.6g})"
    )
    if a.accuracy is not None and b.accuracy is not None:
        est = max(a.estimated, b.estimated)
        note = f" ({est} cloud answers estimated: partial)" if est else ""
        click.echo(
            f"expected accuracy {a.accuracy:.2%} -> {b.accuracy:.2%} "
            f"({(b.accuracy - a.accuracy) * 100:+.2f} points){note}"
        )


@policy.command("calibrate")
@click.option("--policy", "policy_file", required=True, type=click.Path(path_type=Path))
@_LOG
@_LABELS
@click.option("--target-escalation", type=click.FloatRange(0, 1), default=None)
@click.option("--target-accuracy", type=click.FloatRange(0, 1), default=None)
@click.option(
    "--budget",
    type=click.FloatRange(0),
    default=None,
    help="Most cloud spend per 1000 requests (the policy's currency).",
)
@click.option("--task", "only_task", default=None, help="Calibrate only this task.")
@click.option(
    "--plot",
    default=None,
    type=click.Path(path_type=Path),
    help="Also draw the trade-off curves into this PNG file.",
)
@click.option("--write-policy", default=None, type=click.Path(path_type=Path))
@click.option("--report", default=None, type=click.Path(path_type=Path), help="JSON output.")
def policy_calibrate(
    policy_file: Path,
    log: Path,
    labels: Path | None,
    target_escalation: float | None,
    target_accuracy: float | None,
    budget: float | None,
    only_task: str | None,
    plot: Path | None,
    write_policy: Path | None,
    report: Path | None,
) -> None:
    """Pick each hybrid task's threshold for one target (escalation rate, accuracy, or
    budget), print its expected accuracy and cost, plot the trade-off, and optionally
    write the policy with the new thresholds (only the threshold values are edited)."""
    from edgeroute.policy_log import plot_curves
    from router.calibration import choose, threshold_curve
    from router.policy_loader import replace_task_threshold

    if sum(t is not None for t in (target_escalation, target_accuracy, budget)) != 1:
        click.echo(
            "error: give exactly one of --target-escalation, --target-accuracy, --budget",
            err=True,
        )
        sys.exit(2)
    pol, _ = _load(policy_file, offline=True)
    reqs = _requests(log, labels)
    if labels is None:
        click.echo(
            "warning: no --labels: 'accuracy' below is agreement with the cloud's answers, "
            "not accuracy (write a labels file with `edgeroute eval`)",
            err=True,
        )
    curves: dict[str, tuple[Curve, Choice]] = {}
    for name, task in pol.tasks.items():
        if (only_task is not None and name != only_task) or task.placement != "hybrid":
            continue
        mine = [r for r in reqs if r.task == name]
        if task.score == "learned" and any("learned" not in r.scores for r in mine):
            mine = _add_learned(mine, pol, policy_file, name)
        if not mine:
            click.echo(f"{name}: no logged requests; threshold left at {task.threshold}")
            continue
        curve = threshold_curve(mine, task.score, pol.cost.price_per_call)
        choice = choose(
            curve,
            name,
            task.score,
            target_escalation=target_escalation,
            target_accuracy=target_accuracy,
            budget_per_1k=budget,
        )
        curves[name] = (curve, choice)
        note = f"; {choice.estimated} cloud answers estimated (partial)" if choice.estimated else ""
        click.echo(
            f"{name}: {task.score} threshold {choice.threshold:g} (was {task.threshold:g}) -> "
            f"escalation {choice.escalation:.1%}, expected accuracy {choice.accuracy:.2%}, "
            f"cost {choice.cost_per_1k:.4g} {pol.cost.currency} per 1000 requests "
            f"[{len(mine)} logged requests{note}]"
        )
    if not curves:
        click.echo("error: no hybrid task with logged requests to calibrate", err=True)
        sys.exit(1)
    if plot is not None:
        plot_curves(curves, pol.cost.currency, plot)
        click.echo(f"plot written to {plot}")
    if report is not None:
        report.write_text(
            json.dumps({k: dataclasses.asdict(c) for k, (_, c) in curves.items()}, indent=2)
        )
    if write_policy is not None:
        text = policy_file.read_text(encoding="utf-8")
        for name, (_, choice) in curves.items():
            if choice.threshold <= 0.0:
                click.echo(f"{name}: no escalation wanted; use placement: edge_only", err=True)
                sys.exit(1)
            text = replace_task_threshold(text, name, choice.threshold)
        write_policy.write_text(text, encoding="utf-8")
        click.echo(f"policy written to {write_policy} (check it: edgeroute policy check)")


def _add_learned(
    reqs: list[LoggedRequest], pol: Policy, policy_file: Path, task: str
) -> list[LoggedRequest]:
    """The requests with the task's learned score computed from its learned_score file
    (for logs written while the node used another score)."""
    from edge_node.lifecycle.active_policy import load_learned_scores
    from router.calibration import with_score

    model = load_learned_scores(pol, policy_file.parent)[task]
    values = model.score_many([(dict(r.scores), list(r.edge_top)) for r in reqs])
    return with_score(reqs, "learned", values.tolist())


@policy.command("learn-score")
@_LOG
@click.option("--labels", required=True, type=click.Path(path_type=Path), help="True labels.")
@click.option("--task", "task_name", required=True)
@click.option("--out", required=True, type=click.Path(path_type=Path))
def policy_learn_score(log: Path, labels: Path, task_name: str, out: Path) -> None:
    """Train a learned escalation score for TASK from a decision log with true labels,
    compare it held-out (2-fold) with the fixed scores, and write it to OUT (use it with
    `score: learned` and `learned_score: OUT` in the task's policy)."""
    import numpy as np

    from router.calibration import choose, threshold_curve, with_score
    from router.learned_score import fit_learned_score, to_json

    reqs = [r for r in _requests(log, labels) if r.task == task_name and r.true_label]
    rows = [(dict(r.scores), list(r.edge_top)) for r in reqs]
    right = [r.edge_label == r.true_label for r in reqs]
    try:
        model = fit_learned_score(rows, right)
        held_out = np.zeros(len(reqs))
        idx = np.arange(len(reqs))
        for fold in (0, 1):
            train = idx % 2 != fold
            half = fit_learned_score([rows[i] for i in idx[train]], np.array(right)[train])
            held_out[~train] = half.score_many([rows[i] for i in idx[~train]])
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    scored = with_score(reqs, "learned", held_out.tolist())
    click.echo(f"{task_name}: {len(reqs)} labelled requests; expected accuracy (held out)")
    click.echo(f"  {'score':<10} {'@10%':>8} {'@20%':>8} {'@30%':>8}")
    from router.scores import LEARNED, SCORE_NAMES

    for name in (*SCORE_NAMES, LEARNED):
        curve = threshold_curve(scored, name, 0.0)
        accs = [choose(curve, task_name, name, target_escalation=r).accuracy for r in RATES]
        click.echo(f"  {name:<10} " + " ".join(f"{a:8.2%}" for a in accs))
    out.write_text(to_json(model), encoding="utf-8")
    click.echo(f"learned score written to {out} (trained on all {len(reqs)} requests)")


RATES = (0.1, 0.2, 0.3)
