"""The node's model store: installed bundle versions and each task's update state.

Layout under the node's data dir:

    DATA/models/<task>/<version>/   a verified copy of an installed bundle (never modified)
    DATA/models/<task>/state.json   the task's TaskModelState (router.model_updates)
    DATA/models/<task>/.lock        flock serialising read-modify-write of state.json
    DATA/models/incoming/           drop a bundle folder here; the running node installs it
    DATA/models/rejected/           drop-ins the node refused, each with `<name>.reason.txt`

Guarantees: a version folder appears whole or not at all (copied into a staging folder,
verified there, fsynced, renamed); `state.json` is replaced atomically (temp file, fsync,
os.replace) under an exclusive flock, so the CLI and the node never lose each other's
writes. Every method raises BundleError (with a `code`) for anything the caller can fix.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import ValidationError

from edge_node.storage.atomic_files import atomic_write, fsync_dir
from router.errors import BundleError, EdgerouteError
from router.manifest import MANIFEST_FILE, BundleManifest, parse_manifest
from router.model_updates import (
    POLICY_BUNDLE,
    InstallRequest,
    TaskModelState,
    check_compatible,
    check_version_name,
    is_task_name,
)
from router.signing import SIGNATURE_FILE
from runtime.bundle import BundleTrust, load_bundle
from runtime.onnx_model import OnnxModel

STATE_FILE = "state.json"
INCOMING = "incoming"
REJECTED = "rejected"
_RESERVED = frozenset({INCOMING, REJECTED})


class ModelStore:
    """Installed model versions of one node (`root` is `DATA/models`). Safe to use from
    several processes at once (the node and `edgeroute model ...`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def incoming(self) -> Path:
        """The drop-in folder watched by the running node."""
        return self.root / INCOMING

    @property
    def rejected(self) -> Path:
        """Where refused drop-ins are moved, with their reason."""
        return self.root / REJECTED

    @staticmethod
    def can_hold(task: str) -> bool:
        """False for task names the store cannot hold (`incoming`, `rejected`, anything
        but letters, digits and `._-` starting with a letter or digit): such tasks always
        serve their policy bundle."""
        return task not in _RESERVED and is_task_name(task)

    def task_dir(self, task: str) -> Path:
        """The folder of `task`'s versions and state, always directly inside the store's
        root; BundleError (field `task`) if `can_hold` is False."""
        if not self.can_hold(task):
            raise BundleError(
                f"task name {task!r} cannot be used in the model store (letters, digits and "
                "'._-', 1-64 characters, starting with a letter or digit)",
                field="task",
                code="bad_task_name",
            )
        folder = self.root / task
        if folder.resolve().parent != self.root.resolve():
            raise BundleError(f"task name {task!r} leaves the model store", field="task")
        return folder

    def version_dir(self, task: str, version: str) -> Path:
        """Where `version` of `task` is (or would be) installed."""
        check_version_name(version)
        return self.task_dir(task) / version

    def versions(self, task: str) -> list[str]:
        """Installed versions of `task`, sorted by name."""
        d = self.task_dir(task)
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))

    def tasks(self) -> list[str]:
        """Tasks with a state file."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.name not in _RESERVED and (p / STATE_FILE).is_file()
        )

    # ---- state ----------------------------------------------------------------------

    def state_bytes(self, task: str) -> bytes:
        """The raw state file (b"" if absent or unreadable): differs after every write,
        since each write bumps `revision`. A few hundred bytes, cheap enough to poll."""
        try:
            return (self.task_dir(task) / STATE_FILE).read_bytes()
        except OSError:
            return b""

    def read_state(self, task: str) -> TaskModelState:
        """The task's state; the default (policy bundle, nothing pending) if it has none.
        Raises BundleError(code=bad_model_state) if the file is unreadable or invalid."""
        path = self.task_dir(task) / STATE_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return TaskModelState(task=task)
        except OSError as exc:
            raise BundleError(
                f"{path}: cannot be read ({exc.strerror or exc})", code="bad_model_state"
            ) from None
        try:
            state = TaskModelState.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise BundleError(
                f"{path}: invalid model state ({where}: {first['msg']})",
                code="bad_model_state",
                field=where or None,
            ) from None
        if state.task != task:
            raise BundleError(
                f"{path}: state of task {state.task!r} in the folder of {task!r}",
                code="bad_model_state",
            )
        return state

    def update_state(
        self, task: str, change: Callable[[TaskModelState], TaskModelState]
    ) -> TaskModelState:
        """Apply `change` to the task's state under the task's exclusive lock and write the
        result atomically (revision + 1); returns it. If `change` returns its argument
        unchanged nothing is written. Exceptions from `change` propagate, nothing written."""
        d = self.task_dir(task)
        d.mkdir(parents=True, exist_ok=True)
        with self._locked(d):
            old = self.read_state(task)
            new = change(old)
            if new is old:
                return old
            new = new.model_copy(update={"revision": old.revision + 1})
            atomic_write(d / STATE_FILE, new.model_dump_json(indent=2).encode() + b"\n")
            return new

    def request(self, task: str, req: InstallRequest) -> TaskModelState:
        """Record `req` as the task's pending request (replacing an earlier one not yet
        applied). The version must be installed (or be POLICY_BUNDLE)."""
        if req.version != POLICY_BUNDLE and not self.version_dir(task, req.version).is_dir():
            raise BundleError(
                f"version {req.version!r} of task {task!r} is not installed "
                f"(installed: {', '.join(self.versions(task)) or 'none'})",
                code="not_installed",
            )
        return self.update_state(task, lambda s: s.model_copy(update={"pending": req}))

    @contextlib.contextmanager
    def _locked(self, task_dir: Path) -> Iterator[None]:
        fd = os.open(task_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    # ---- installing -------------------------------------------------------------------

    def reference_manifest(self, task: str, policy_bundle: Path) -> BundleManifest:
        """The manifest of the version the task's state says is current (the policy's
        bundle at `policy_bundle` for POLICY_BUNDLE): what a new version must match."""
        current = self.read_state(task).current
        folder = policy_bundle if current == POLICY_BUNDLE else self.version_dir(task, current)
        return read_manifest(folder)

    def install(
        self, src: Path, task: str, trust: BundleTrust, reference: BundleManifest
    ) -> tuple[str, bool]:
        """Copy the bundle at `src` into the store as a new version of `task`, after
        verifying the copy exactly as the node loads bundles (`trust`: signature and
        hashes; onnxruntime; graph against manifest), checking it can replace `reference`
        (same task, labels, input spec) and running a smoke inference.

        Returns (version, newly_installed). Installing a version already in the store with
        the identical manifest re-checks it and returns (version, False); with a different
        manifest it raises BundleError(code=version_conflict). Any failure leaves the store
        as it was. Does not change the task's state (see `request`).
        """
        manifest = read_manifest(src)
        verify_version(src, task, trust, reference)  # refusals name the user's folder
        dest = self.version_dir(task, manifest.version)
        if dest.exists():
            if (dest / MANIFEST_FILE).read_bytes() != (src / MANIFEST_FILE).read_bytes():
                raise BundleError(
                    f"version {manifest.version!r} of task {task!r} is already installed with "
                    "different content; pack the new bundle with a new --version",
                    code="version_conflict",
                )
            verify_version(dest, task, trust, reference)
            return manifest.version, False
        dest.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{manifest.version}.", dir=dest.parent))
        try:
            _copy_bundle(src, stage, manifest)
            verify_version(stage, task, trust, reference)
            try:
                os.rename(stage, dest)
            except OSError:  # someone installed the same version meanwhile
                raise BundleError(
                    f"version {manifest.version!r} of task {task!r} was installed concurrently",
                    code="version_conflict",
                ) from None
            fsync_dir(dest.parent)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        return manifest.version, True


def verify_version(
    folder: Path, task: str, trust: BundleTrust, reference: BundleManifest
) -> OnnxModel:
    """Load the bundle at `folder` as the node does (`runtime.bundle.load_bundle`: every
    bundle check, the smoke run included, as an edge bundle of the running model's task,
    `reference.task`, which the policy's task `task` serves) and check it can replace
    `reference`; returns the ready model. Raises BundleError (codes: the loader's, plus
    `model_mismatch`)."""
    model = OnnxModel(load_bundle(folder, trust, task=reference.task, role="edge"))
    check_compatible(model.bundle.manifest, reference, reference.task)
    return model


def read_manifest(folder: Path) -> BundleManifest:
    """The parsed manifest of the bundle at `folder`; BundleError if missing or invalid."""
    path = folder / MANIFEST_FILE
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return parse_manifest(raw, str(path))


def failure_text(exc: BaseException) -> str:
    """One line saying why a model update step failed, for logs and the state file's
    `last.detail`: an EdgerouteError's message, an OSError's file and reason."""
    if isinstance(exc, EdgerouteError):
        return exc.message
    if isinstance(exc, OSError):
        return f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")
    return str(exc)


def _copy_bundle(src: Path, dest: Path, manifest: BundleManifest) -> None:
    """Copy the manifest, its signature (if any) and every file it lists; fsync all."""
    names = [MANIFEST_FILE, *manifest.files]
    if (src / SIGNATURE_FILE).exists():
        names.append(SIGNATURE_FILE)
    for name in names:
        if Path(name).name != name or name in (".", ".."):
            raise BundleError(f"{src}: manifest lists a file outside the bundle: {name!r}")
        try:
            shutil.copyfile(src / name, dest / name)
        except FileNotFoundError:
            raise BundleError(f"{src / name}: missing from the bundle") from None
        except OSError as exc:
            raise BundleError(f"{src / name}: cannot be copied ({exc.strerror or exc})") from None
        with open(dest / name, "rb") as fh:
            os.fsync(fh.fileno())
    fsync_dir(dest)
