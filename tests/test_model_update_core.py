"""Model updates without a node: the canary rule's verdicts, the policy's canary fields,
the loader's smoke run and the compatibility check, and the canary wrapper (real
onnxruntime sessions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_node.lifecycle.canary import CanaryModel
from router.errors import BundleError, PolicyError
from router.manifest import InputSpec
from router.model_updates import CanaryCounts, canary_verdict, check_compatible
from router.policy import CanaryRule
from router.policy_loader import parse_policy
from runtime.bundle import load_bundle
from runtime.onnx_model import OnnxModel
from tests.model_update_support import V1, V3, build_versions, trust_of
from tests.waiting import wait_until


@pytest.fixture(scope="module")
def bundles(demo_bundles_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The signed versions of `tests.model_update_support.build_versions`."""
    return build_versions(demo_bundles_dir / "edge" / "digits", tmp_path_factory.mktemp("v"))


def test_canary_verdict_waits_then_promotes_or_rolls_back() -> None:
    """The rule waits for min_requests runs, rolls back on low agreement or high error
    rate, and promotes otherwise."""
    rule = CanaryRule(min_requests=10, min_agreement=0.9, max_error_rate=0.1)
    assert canary_verdict(CanaryCounts(compared=9, agreed=9), rule)[0] == "wait"
    assert canary_verdict(CanaryCounts(compared=10, agreed=9), rule)[0] == "promote"
    verdict, reason = canary_verdict(CanaryCounts(compared=10, agreed=8), rule)
    assert verdict == "roll_back" and "agreement 0.800 < min_agreement 0.9" in reason
    verdict, reason = canary_verdict(CanaryCounts(compared=8, agreed=8, errors=2), rule)
    assert verdict == "roll_back" and "error rate 0.200" in reason


def test_policy_canary_rule_is_validated_with_field_and_line() -> None:
    """`tasks.<t>.canary` is strict: unknown keys and out-of-range values are reported
    with their dotted path and line; defaults apply when it is absent."""
    head = "queue: {max_items: 10, max_bytes: 1048576, on_full: reject}\ntasks:\n  digits:\n"
    ok = parse_policy(head + "    edge_bundle: b\n    threshold: 0.5\n")
    assert ok.tasks["digits"].canary == CanaryRule()
    bad = head + (
        "    edge_bundle: b\n    threshold: 0.5\n    canary:\n"
        "      min_request: 5\n      min_agreement: 1.5\n"
    )
    with pytest.raises(PolicyError) as info:
        parse_policy(bad, source="p.yaml")
    text = str(info.value)
    assert "p.yaml:7:7: tasks.digits.canary.min_request: unknown key 'min_request'; " in text
    assert "did you mean 'min_requests'?" in text
    assert "p.yaml:8:7: tasks.digits.canary.min_agreement: Input should be less than" in text


def test_smoke_check_and_compatibility_refuse_bad_versions(bundles: dict[str, Path]) -> None:
    """A model returning NaN fails the loader's smoke inference; other labels, input spec
    or task fail the compatibility check; a good version passes both."""
    trust = trust_of(bundles)
    good = OnnxModel(load_bundle(bundles["v2"], trust))
    with pytest.raises(BundleError) as info:
        load_bundle(bundles["nan"], trust)
    assert info.value.code == "smoke_failed" and "non-finite" in info.value.message
    ref = good.bundle.manifest
    for changed in (
        ref.model_copy(update={"labels": list(reversed(ref.labels))}),
        ref.model_copy(update={"input": InputSpec(name="input", shape=[None, 64])}),
        ref.model_copy(update={"task": "other"}),
        ref.model_copy(update={"role": "cloud"}),
    ):
        with pytest.raises(BundleError) as info:
            check_compatible(changed, ref, "digits")
        assert info.value.code == "model_mismatch"
    check_compatible(ref, ref, "digits")


def test_canary_model_serves_its_fraction_compares_and_survives_candidate_faults(
    bundles: dict[str, Path], digits_split: tuple[np.ndarray, np.ndarray]
) -> None:
    """Fraction mode answers exactly its share with the candidate (its Prediction carries
    the candidate's version), compares it with the current model, and a candidate
    returning NaN is counted as an error while the current model answers."""
    trust = trust_of(bundles)
    current = OnnxModel(load_bundle(bundles["v1"], trust))
    shifted = OnnxModel(load_bundle(bundles["v3"], trust))
    xs = digits_split[0][:40]
    canary = CanaryModel(current, shifted, "fraction", 0.25, background=False)
    versions = []
    for x in xs:
        answer = canary.predict(x.reshape(1, -1))
        versions.append(answer.version)
        expected = shifted if versions[-1] == V3 else current
        np.testing.assert_allclose(answer.probs, expected.predict(x.reshape(1, -1)).probs)
    c = canary.counts()
    assert versions.count(V3) == 10 and versions.count(V1) == 30
    assert (c.served_by_candidate, c.compared, c.errors) == (10, 10, 0)
    assert c.agreed <= 2  # shifted labels almost never agree
    assert canary.version == V1  # the serving (current) version

    broken = _unchecked(bundles["nan"])  # a candidate that fails at inference
    faulty = CanaryModel(current, broken, "fraction", 1.0, background=False)
    probs = faulty.predict(xs[:5]).probs
    np.testing.assert_allclose(probs, current.predict(xs[:5]).probs)
    assert faulty.counts().errors == 5 and faulty.counts().served_by_candidate == 0
    shadow = CanaryModel(current, broken, "shadow", 0.0)  # background comparisons
    np.testing.assert_allclose(shadow.predict(xs[:3]).probs, current.predict(xs[:3]).probs)
    wait_until(lambda: shadow.counts().errors == 3, 5, 0.05, what="3 background comparison errors")
    shadow.close()


def _unchecked(folder: Path) -> OnnxModel:
    """The bundle at `folder` as a model *without* the loader's checks (its smoke run
    would refuse it): a candidate that fails at inference."""
    import onnxruntime as ort

    from router.manifest import parse_manifest
    from runtime.bundle import LoadedBundle

    manifest = parse_manifest((folder / "manifest.json").read_bytes(), str(folder))
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return OnnxModel(LoadedBundle(manifest=manifest, session=session, path=folder))
