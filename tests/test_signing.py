"""Signed models, for real: a model signed in the store (train_and_save.py), verified by
`bentoml serve` before it is loaded when MODEL_VERIFY_KEY names the trusted keys, and every
way of breaking that refused at start with its reason."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from conftest import BIN, ROOT, BentoServer, run_train
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from harness.local_server import free_port


def ec_key(where: Path, name: str) -> tuple[Path, Path, str]:
    """A P-256 key pair as PEM files (what `openssl ecparam` makes), and the public key's
    fingerprint as the service reports it (the SHA-256 of the public PEM file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = where / f"{name}.pem", where / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public, hashlib.sha256(public.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, str]]:
    where = tmp_path_factory.mktemp("keys")
    return {name: ec_key(where, name) for name in ("team", "other", "next")}


@pytest.fixture
def store(model_home: Path, tmp_path: Path, demo_tag: str) -> tuple[Path, Path]:
    """A model store of this test's own with the demo model (a copy: tests break it), and
    the demo's directory in it."""
    home = tmp_path / "home"
    shutil.copytree(model_home / "models", home / "models")
    name, version = demo_tag.split(":")
    return home, home / "models" / name / version


def sign(home: Path, key: Path, *extra: str) -> str:
    result = run_train(home, "sign", "linear-2x:latest", "--key", str(key), *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def refused_start(home: Path, tmp_path: Path, **env: str) -> str:
    """`bentoml serve` with `env`, which must stop at start: its error line."""
    port = free_port()
    cmd = [str(BIN / "bentoml"), "serve", "service:OnnxServing", "--port", str(port)]
    cmd += ["--host", "127.0.0.1"]
    full = {"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", "GRPC_PORT": "0", **env}
    result = subprocess.run(
        cmd, cwd=ROOT, env={**os.environ, **full}, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0, result.stdout + result.stderr
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "error:" in line]
    assert len(errors) == 1, result.stdout + result.stderr
    return errors[0]


def test_signed_model_is_verified_at_start_and_metadata_says_by_whom(
    store: tuple[Path, Path], keys: dict, tmp_path: Path
) -> None:
    home, model_dir = store
    private, public, fingerprint = keys["team"]
    said = sign(home, private)
    assert said.startswith("signed linear-2x:") and fingerprint in said
    assert (model_dir / "model.sig").is_file()
    # The private key is nowhere in the store.
    secret = private.read_bytes()
    assert not any(secret in p.read_bytes() for p in model_dir.iterdir())
    verified = run_train(home, "verify", "linear-2x:latest", "--key", str(public))
    assert verified.returncode == 0 and "verified linear-2x:" in verified.stdout
    # Rotation: any of several trusted keys will do.
    trusted = f"{keys['next'][1]},{public}"
    server = BentoServer(home, tmp_path / "serve.log", MODEL_VERIFY_KEY=trusted)
    try:
        server.wait_ready(timeout=90)
        meta = httpx.get(f"{server.url}/metadata").json()
    finally:
        server.stop()
    assert meta["integrity"] == {
        "check": "signature",
        "signed_by": f"key sha256:{fingerprint}",
        "verified_with": public.name,
    }
    log = server.log_path.read_text()
    assert "signature verified: key sha256:" in log and fingerprint in log


def test_without_a_key_the_check_is_sha256(server_url: str) -> None:
    assert httpx.get(f"{server_url}/metadata").json()["integrity"] == {"check": "sha256"}


def break_by_editing_metadata(model_dir: Path) -> str:
    path = model_dir / "model.yaml"
    path.write_text(path.read_text().replace("origin: train_and_save", "origin: someone"))
    return "a file changed after it was signed: model.yaml"


def break_by_swapping_the_file(model_dir: Path) -> str:
    """The attack a recorded SHA-256 can't see: another file, and its hash recorded anew."""
    import hashlib

    onnx, yaml_path = model_dir / "model.onnx", model_dir / "model.yaml"
    old = hashlib.sha256(onnx.read_bytes()).hexdigest()
    swapped = onnx.read_bytes().replace(b"y", b"z")  # the output renamed
    onnx.write_bytes(swapped)
    new = hashlib.sha256(swapped).hexdigest()
    yaml_path.write_text(yaml_path.read_text().replace(old, new))
    return "a file changed after it was signed: model"


def break_by_adding_a_file(model_dir: Path) -> str:
    (model_dir / "extra.onnx").write_bytes(b"\0")
    return "a file was added after signing: extra.onnx"


def break_by_removing_the_signature(model_dir: Path) -> str:
    (model_dir / "model.sig").unlink()
    return "it is not signed"


@pytest.mark.parametrize(
    "breaking",
    [
        break_by_editing_metadata,
        break_by_swapping_the_file,
        break_by_adding_a_file,
        break_by_removing_the_signature,
    ],
)
def test_a_broken_signature_stops_the_start_with_its_reason(
    store: tuple[Path, Path], keys: dict, tmp_path: Path, breaking: object
) -> None:
    home, model_dir = store
    sign(home, keys["team"][0])
    reason = breaking(model_dir)  # type: ignore[operator]
    error = refused_start(home, tmp_path, MODEL_VERIFY_KEY=str(keys["team"][1]))
    assert error.startswith("error: refusing to serve linear-2x:") and reason in error, error


def test_another_key_or_no_signature_is_refused(
    store: tuple[Path, Path], keys: dict, tmp_path: Path
) -> None:
    home, _ = store
    unsigned = refused_start(home, tmp_path, MODEL_VERIFY_KEY=str(keys["team"][1]))
    assert "it is not signed" in unsigned and "train_and_save.py sign" in unsigned
    sign(home, keys["other"][0])
    wrong = refused_start(home, tmp_path, MODEL_VERIFY_KEY=str(keys["team"][1]))
    assert "signed by another key than team.pub" in wrong, wrong
    missing = refused_start(home, tmp_path, MODEL_VERIFY_KEY=str(tmp_path / "nope.pub"))
    assert "MODEL_VERIFY_KEY" in missing and "nope.pub" in missing, missing


def test_certificate_signed_models_verify_against_their_chain(
    store: tuple[Path, Path], tmp_path: Path
) -> None:
    """Signed as a certificate issued by a team CA; trusted: the CA's certificate."""
    import datetime

    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    home, _ = store
    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key: object, issuer: str, signer: object, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())  # type: ignore[attr-defined]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())  # type: ignore[arg-type]

    ca_key, leaf_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = cert("Model CA", ca_key, "Model CA", ca_key, True)
    leaf = cert("ml-team", leaf_key, "Model CA", ca_key, False)
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (tmp_path / "leaf.key").write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    said = sign(home, tmp_path / "leaf.key", "--certificate", str(tmp_path / "leaf.pem"),
                "--chain", str(tmp_path / "ca.pem"))  # fmt: skip
    assert "certificate CN=ml-team" in said
    verified = run_train(home, "verify", "linear-2x:latest", "--key", str(tmp_path / "ca.pem"))
    assert verified.returncode == 0, verified.stderr
    assert "certificate CN=ml-team" in verified.stdout


def test_a_signed_variant_names_its_parent_s_signature(
    store: tuple[Path, Path], keys: dict
) -> None:
    home, model_dir = store
    private, public, fingerprint = keys["team"]
    sign(home, private)
    made = run_train(home, "optimize", "linear-2x:latest", "--fp16", "--sign-key", str(private))
    assert made.returncode == 0, made.stdout + made.stderr
    variant = made.stdout.split(": ", 1)[0]
    verified = run_train(home, "verify", variant, "--key", str(public))
    assert verified.returncode == 0, verified.stderr
    name, version = variant.split(":")
    info = (home / "models" / name / version / "model.yaml").read_text()
    parent_sig = (model_dir / "model.sig").read_bytes()
    assert hashlib.sha256(parent_sig).hexdigest() in info and fingerprint in info
    # Another key than the parent's signer: refused, nothing saved.
    other = run_train(
        home, "optimize", "linear-2x:latest", "--int8", "--sign-key", str(keys["other"][0])
    )
    assert other.returncode == 1 and "signed by another key" in other.stdout + other.stderr


def test_the_bundle_lists_every_stored_file(store: tuple[Path, Path], keys: dict) -> None:
    home, model_dir = store
    sign(home, keys["team"][0])
    bundle = json.loads((model_dir / "model.sig").read_text())
    import base64

    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    listed = {r["name"] for r in statement["predicate"]["resources"]}
    assert listed == {p.name for p in model_dir.iterdir()} - {"model.sig"}
