"""The policy a request is decided by, with everything compiled from it once.

An `ActivePolicy` is immutable; the service swaps the whole object atomically (one
attribute assignment) on reload, and each request reads it exactly once, so every
request is decided by exactly one whole policy.

A task's edge model is the policy's `edge_bundle` unless the node's model store
(`edge_node.lifecycle.model_store`, `DATA/models`) has installed another version for it: then that
version serves (and wins over the policy across restarts and policy reloads), wrapped in a
`CanaryModel` while a canary or shadow run is in progress.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from edge_node.lifecycle.canary import CanaryModel
from edge_node.lifecycle.model_store import ModelStore
from router.errors import BundleError, EdgerouteError, PolicyError, PolicyIssue
from router.learned_score import LearnedScore, from_json
from router.manifest import check_bundle_role, parse_manifest
from router.model_updates import POLICY_BUNDLE, TaskModelState, check_compatible
from router.policy import Policy
from router.policy_loader import parse_policy, policy_revision, resolve_bundle_path
from router.signing import key_id_of, public_key_from_pem
from runtime.bundle import BundleTrust, load_bundle
from runtime.model import Model
from runtime.onnx_model import OnnxModel

log = structlog.get_logger("edgeroute.edge")


@dataclass(frozen=True)
class ActivePolicy:
    """A validated policy, its revision, and the edge model of each task (an `OnnxModel`,
    or a `CanaryModel` while a canary runs)."""

    policy: Policy
    revision: str
    source: str
    loaded_at: float
    models: dict[str, Model]
    learned: dict[str, LearnedScore] = field(default_factory=dict)
    model_errors: dict[str, str] = field(default_factory=dict)
    """Tasks whose installed version failed to load at activation (they serve the
    policy's bundle instead) -> why."""

    @property
    def model_versions(self) -> dict[str, str]:
        return {task: model.version for task, model in self.models.items()}


def load_learned_scores(policy: Policy, policy_dir: Path) -> dict[str, LearnedScore]:
    """Each task's learned score file (`tasks.<name>.learned_score`, relative to the
    policy's folder). Raises PolicyError naming every file that is missing or invalid."""
    out: dict[str, LearnedScore] = {}
    issues: list[PolicyIssue] = []
    for name, task in policy.tasks.items():
        if task.learned_score is None:
            continue
        path = Path(resolve_bundle_path(str(policy_dir), task.learned_score))
        try:
            out[name] = from_json(path.read_text(encoding="utf-8"))
        except OSError as exc:
            msg = f"cannot read learned score {path}: {exc.strerror or exc}"
            issues.append(PolicyIssue(f"tasks.{name}.learned_score", msg))
        except ValueError as exc:
            msg = f"{path} is not a learned score: {exc}"
            issues.append(PolicyIssue(f"tasks.{name}.learned_score", msg))
    if issues:
        raise PolicyError(issues)
    return out


def bundle_exists(path: str) -> bool:
    """True if `path` looks like a model bundle folder."""
    return (Path(path) / "manifest.json").is_file()


def bundle_label_count(path: str) -> int | None:
    """The number of labels in the bundle manifest at `path`; None if it cannot be read
    (a missing or broken bundle is reported by the bundle checks instead)."""
    try:
        manifest = parse_manifest((Path(path) / "manifest.json").read_bytes(), path)
    except (OSError, EdgerouteError):
        return None
    return len(manifest.labels)


def load_policy_text(
    path: Path, text: str, env: dict[str, str] | None = None, *, check_token_env: bool = True
) -> tuple[Policy, str]:
    """Validate `text` as the policy file at `path` (bundles are looked up relative to it);
    returns (policy, revision). Raises PolicyError listing every issue. `check_token_env`
    False skips the check that `cloud.token_env` is set (for offline tools)."""
    policy = parse_policy(
        text,
        source=str(path),
        env=dict(os.environ) if env is None else env,
        bundle_exists=bundle_exists,
        policy_dir=str(path.parent),
        label_count=bundle_label_count,
        check_token_env=check_token_env,
    )
    load_learned_scores(policy, path.parent)
    return policy, policy_revision(text)


def load_policy_file(
    path: Path, env: dict[str, str] | None = None, *, check_token_env: bool = True
) -> tuple[Policy, str]:
    """Read and validate a policy file; returns (policy, revision). Raises PolicyError
    (invalid, or not valid UTF-8) or OSError (unreadable)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(
            [PolicyIssue("", f"not UTF-8 text: {exc.reason} at byte {exc.start}", str(path))]
        ) from None
    return load_policy_text(path, text, env, check_token_env=check_token_env)


def activate(
    path: Path,
    now: float,
    reuse: ActivePolicy | None = None,
    text: str | None = None,
    store: ModelStore | None = None,
) -> ActivePolicy:
    """Validate the policy at `path` (or `text`, already read from it) and load every
    task's edge model: the version `store` has installed for it, else its `edge_bundle`.

    Models already loaded by `reuse` from the same folder are kept (no reload; a canary
    in progress keeps its counters). An installed version that fails to load is skipped:
    the task serves its policy bundle and `model_errors` says why (in `/v1/status`). A
    task state file (`state.json`) that cannot be read raises BundleError(code=
    bad_model_state): which model should serve is unknown, so nothing is guessed. Raises
    PolicyError or BundleError (policy bundles); nothing is swapped on failure (the
    caller decides).
    """
    policy, revision = load_policy_file(path) if text is None else load_policy_text(path, text)
    trust = bundle_trust(policy, path.parent)
    known = _loaded_models(reuse)
    models: dict[str, Model] = {}
    errors: dict[str, str] = {}
    for name, task in policy.tasks.items():
        bundle_dir = Path(resolve_bundle_path(str(path.parent), task.edge_bundle))
        old = reuse.models.get(name) if reuse is not None else None
        if store is not None and store.can_hold(name):
            try:
                state = store.read_state(name)
                if state.current != POLICY_BUNDLE or state.canary is not None:
                    models[name] = installed_model(
                        name, state, bundle_dir, store, trust, known, old, task.bundle_task
                    )
                    continue
            except BundleError as exc:
                if exc.code == "bad_model_state":
                    raise BundleError(
                        f"{exc.message}; the node will not guess which model task {name!r} "
                        "should serve: restore that file from a backup, or delete it to "
                        "serve the policy's edge_bundle (installed versions are kept)",
                        code="bad_model_state",
                    ) from None
                errors[name] = exc.message
                log.warning("installed_model_failed", task=name, error=exc.message)
        models[name] = _load_or_reuse(bundle_dir, trust, known, task.bundle_task or name)
    learned = load_learned_scores(policy, path.parent)
    return ActivePolicy(policy, revision, str(path), now, models, learned, errors)


def bundle_problems(policy: Policy, policy_dir: Path) -> list[tuple[str, BundleError]]:
    """Each task's `edge_bundle` put through what the node does at start (the one bundle
    validation, `runtime.bundle.load_bundle`, with the policy's trust, as an edge bundle
    of `bundle_task` or the task's name): (task name, error) for each it would refuse,
    in task order. Raises PolicyError if a trusted key file cannot be read."""
    trust = bundle_trust(policy, policy_dir)
    problems: list[tuple[str, BundleError]] = []
    for name, task in policy.tasks.items():
        folder = Path(resolve_bundle_path(str(policy_dir), task.edge_bundle))
        try:
            load_bundle(folder, trust, task=task.bundle_task or name, role="edge")
        except BundleError as exc:
            problems.append((name, exc))
    return problems


def installed_model(
    task: str,
    state: TaskModelState,
    policy_bundle: Path,
    store: ModelStore,
    trust: BundleTrust,
    known: dict[Path, Model],
    old: Model | None,
    bundle_task: str | None = None,
) -> Model:
    """The model `state` says serves `task`: its `current` version (POLICY_BUNDLE:
    `policy_bundle`), wrapped in a CanaryModel with the candidate while `state.canary` is
    set. Every version's manifest must name `bundle_task` (default: `task`). Reuses `old`
    (a canary with the same versions and settings) or any model in `known` (folder ->
    model) instead of loading again. Raises BundleError."""
    model_task = bundle_task or task

    def folder(version: str) -> Path:
        return policy_bundle if version == POLICY_BUNDLE else store.version_dir(task, version)

    current_dir = folder(state.current)
    canary = state.canary
    if canary is None:
        return _load_or_reuse(current_dir, trust, known, model_task)
    cand_dir = folder(canary.version)
    if (
        isinstance(old, CanaryModel)
        and old.current.bundle.path == current_dir
        and old.candidate.bundle.path == cand_dir
        and old.mode == canary.mode
        and old.fraction == (canary.fraction if canary.mode == "fraction" else 0.0)
    ):
        return old
    current = _load_or_reuse(current_dir, trust, known, model_task)
    candidate = _load_or_reuse(cand_dir, trust, known, model_task)
    check_compatible(candidate.bundle.manifest, current.bundle.manifest, model_task)
    return CanaryModel(current, candidate, canary.mode, canary.fraction)


def _loaded_models(reuse: ActivePolicy | None) -> dict[Path, Model]:
    """Every plain model `reuse` holds (canary parts included), by bundle folder."""
    out: dict[Path, Model] = {}
    for model in reuse.models.values() if reuse is not None else ():
        parts = (model.current, model.candidate) if isinstance(model, CanaryModel) else (model,)
        for part in parts:
            out[part.bundle.path] = part
    return out


def _load_or_reuse(folder: Path, trust: BundleTrust, known: dict[Path, Model], task: str) -> Model:
    """The edge model of `task` in `folder`: reused from `known`, else loaded with every
    bundle check (`runtime.bundle.load_bundle`). Raises BundleError."""
    model = known.get(folder)
    if model is None:
        model = OnnxModel(load_bundle(folder, trust, task=task, role="edge"))
        known[folder] = model
    else:  # loaded for another task sharing the folder: it must serve this one too
        check_bundle_role(model.bundle.manifest, str(folder), task=task, role="edge")
    return model


def bundle_trust(policy: Policy, policy_dir: Path) -> BundleTrust:
    """The policy's `trust` section with its key files read. Raises PolicyError naming the
    key file that is missing or not an Ed25519 public key."""
    keys = {}
    for i, name in enumerate(policy.trust.trusted_keys):
        key_path = Path(resolve_bundle_path(str(policy_dir), name))
        field = f"trust.trusted_keys.{i}"
        try:
            key = public_key_from_pem(key_path.read_bytes(), str(key_path))
        except OSError as exc:
            raise PolicyError(
                [PolicyIssue(field, f"cannot read key file {key_path}: {exc.strerror or exc}")]
            ) from None
        except BundleError as exc:
            raise PolicyError([PolicyIssue(field, exc.message)]) from None
        keys[key_id_of(key)] = key
    return BundleTrust(policy.trust.require_signed, keys)
