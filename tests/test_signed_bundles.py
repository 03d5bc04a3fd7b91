"""Signed bundles: keygen, pack, verify, and every rejected-bundle case."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeroute.bundle_tools import keygen, pack
from edgeroute.cli import main
from router.errors import BundleError
from router.manifest import sha256_hex
from router.signing import SIGNATURE_FILE, key_id_of, public_key_from_pem, sign_manifest
from runtime.bundle import BundleTrust, load_bundle


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two key pairs: a trusted one and an unknown one."""
    d = tmp_path_factory.mktemp("keys")
    trusted_key, trusted_pub, _ = keygen(d / "trusted")
    other_key, other_pub, _ = keygen(d / "other")
    return {"key": trusted_key, "pub": trusted_pub, "other_key": other_key, "other_pub": other_pub}


@pytest.fixture
def signed(demo_bundles_dir: Path, keys: dict[str, Path], tmp_path: Path) -> Path:
    """A freshly signed copy of the demo edge bundle."""
    return pack(
        demo_bundles_dir / "edge" / "digits",
        tmp_path / "signed",
        keys["key"].read_bytes(),
        version="digits-edge-2.0.0",
    )


def _trust(keys: dict[str, Path], require: bool = True) -> BundleTrust:
    pub = public_key_from_pem(keys["pub"].read_bytes())
    return BundleTrust(require_signed=require, keys={key_id_of(pub): pub})


def test_signed_bundle_loads_and_names_its_key(signed: Path, keys: dict[str, Path]) -> None:
    """A bundle packed with a trusted key loads, reports the key id and the new version."""
    b = load_bundle(signed, _trust(keys))
    assert b.signed_by == key_id_of(public_key_from_pem(keys["pub"].read_bytes()))
    assert b.manifest.version == "digits-edge-2.0.0"


def test_keygen_refuses_to_overwrite_and_protects_the_private_key(keys: dict[str, Path]) -> None:
    """The private key is mode 0600 and keygen never overwrites a key."""
    assert keys["key"].stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        keygen(keys["key"].with_suffix(""))


def _expect(path: Path, trust: BundleTrust, code: str) -> None:
    with pytest.raises(BundleError) as info:
        load_bundle(path, trust)
    assert info.value.code == code, info.value.message


def test_unsigned_bundle_refused_when_required(
    demo_bundles_dir: Path, keys: dict[str, Path]
) -> None:
    """require_signed refuses a bundle without manifest.sig; without it, it loads."""
    unsigned = demo_bundles_dir / "edge" / "digits"
    _expect(unsigned, _trust(keys), "unsigned_bundle")
    assert load_bundle(unsigned, _trust(keys, require=False)).signed_by is None


def test_manifest_changed_after_signing_is_refused(signed: Path, keys: dict[str, Path]) -> None:
    """Editing manifest.json after signing breaks the signature."""
    m = json.loads((signed / "manifest.json").read_text())
    m["labels"][0] = "zero"
    (signed / "manifest.json").write_text(json.dumps(m))
    _expect(signed, _trust(keys), "bad_signature")


def test_untrusted_key_is_refused(signed: Path, keys: dict[str, Path]) -> None:
    """A bundle signed by a key that is not trusted is refused."""
    other = public_key_from_pem(keys["other_pub"].read_bytes())
    _expect(signed, BundleTrust(True, {key_id_of(other): other}), "untrusted_key")


def test_tampered_and_truncated_model_are_refused(signed: Path, keys: dict[str, Path]) -> None:
    """A flipped byte or a truncated model.onnx fails the sha256 check."""
    model = signed / "model.onnx"
    data = bytearray(model.read_bytes())
    backup = bytes(data)
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    _expect(signed, _trust(keys), "invalid_bundle")
    model.write_bytes(backup[: len(backup) // 2])
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(signed, _trust(keys))


def test_signed_manifest_not_matching_graph_is_refused(
    signed: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    """A correctly signed manifest whose input name differs from the ONNX graph is refused."""
    m = json.loads((signed / "manifest.json").read_text())
    m["input"]["name"] = "pixels"
    raw = json.dumps(m).encode()
    (signed / "manifest.json").write_bytes(raw)
    (signed / SIGNATURE_FILE).write_bytes(sign_manifest(raw, keys["key"].read_bytes()))
    with pytest.raises(BundleError, match="input"):
        load_bundle(signed, _trust(keys))


def test_garbage_signature_file_is_refused(signed: Path, keys: dict[str, Path]) -> None:
    """An unparseable manifest.sig is refused with its own code."""
    (signed / SIGNATURE_FILE).write_text("not json")
    _expect(signed, _trust(keys), "bad_signature_file")


def test_cli_keygen_pack_verify(demo_bundles_dir: Path, tmp_path: Path) -> None:
    """`edgeroute model keygen|pack|verify` round trip, and verify exits 1 on tampering."""
    runner = CliRunner()
    r = runner.invoke(main, ["model", "keygen", str(tmp_path / "k")])
    assert r.exit_code == 0, r.output
    out = tmp_path / "bundle"
    r = runner.invoke(
        main,
        [
            "model",
            "pack",
            str(demo_bundles_dir / "edge" / "digits"),
            str(out),
            "--key",
            str(tmp_path / "k.key"),
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["model", "verify", str(out), "--pubkey", str(tmp_path / "k.pub")])
    assert r.exit_code == 0 and "ok: digits" in r.output, r.output
    shutil.copyfile(out / "model.onnx", tmp_path / "m")
    (out / "model.onnx").write_bytes((tmp_path / "m").read_bytes()[:-10])
    r = runner.invoke(main, ["model", "verify", str(out), "--pubkey", str(tmp_path / "k.pub")])
    assert r.exit_code == 1 and "REJECTED" in r.output


def test_pack_lists_every_file_hash(signed: Path) -> None:
    """The packed manifest lists the sha256 of every file in the bundle."""
    m = json.loads((signed / "manifest.json").read_text())
    files = {p.name for p in signed.iterdir()} - {"manifest.json", SIGNATURE_FILE}
    assert set(m["files"]) == files
    assert all(m["files"][n] == sha256_hex((signed / n).read_bytes()) for n in files)


def _trust_policy(bundle: Path, pub: Path) -> str:
    return (
        f"queue: {{max_items: 10, max_bytes: 1048576, on_full: reject}}\n"
        f"trust:\n  require_signed: true\n  trusted_keys: [{pub}]\n"
        f"tasks:\n  digits:\n    edge_bundle: {bundle}\n    threshold: 0.5\n"
    )


def test_edge_node_refuses_unsigned_bundle_and_serves_signed(
    demo_bundles_dir: Path,
    signed: Path,
    keys: dict[str, Path],
    tmp_path: Path,
    start_edge: object,
) -> None:
    """With require_signed, `edgeroute edge serve` exits 2 naming the reason for an unsigned
    bundle, and serves a bundle signed by a trusted key."""
    import subprocess

    from edgeroute import processes
    from tests.edge_fixtures import EdgeNode

    policy = tmp_path / "p.yaml"
    policy.write_text(_trust_policy(demo_bundles_dir / "edge" / "digits", keys["pub"]))
    proc = subprocess.run(
        processes.edgeroute_cmd(
            "edge",
            "serve",
            "--policy",
            str(policy),
            "--data-dir",
            str(tmp_path / "d"),
            "--port",
            str(processes.free_port()),
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "not signed" in proc.stderr, proc.stderr
    node = start_edge(_trust_policy(signed, keys["pub"]), "http://127.0.0.1:9")  # type: ignore[operator]
    assert isinstance(node, EdgeNode)
    assert node.status()["models"] == {"digits": "digits-edge-2.0.0"}
