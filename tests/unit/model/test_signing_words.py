"""onnx_serving/model/signing.py in-process: model-signing's failures put in words, and the
key fingerprint as model-signing writes it into a bundle."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from onnx_serving.model import signing

KEY = Path("team.pub")


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        # What model-signing 1.1.1 raises, as seen: the list of problems, repr'd.
        (
            "Signature mismatch: ['Hash mismatch for \\'model.yaml\\': Expected ...']",
            "a file changed after it was signed: model.yaml",
        ),
        (
            "Signature mismatch: [\"Extra files found in model 'model': extra.onnx\"]",
            "a file was added after signing: extra.onnx",
        ),
        (
            "Key mismatch: The public key hash in the signature's verification material does "
            "not match the provided public key.",
            "it was signed by another key than team.pub (Key mismatch: ",
        ),
        ("something new", "its signature does not verify with team.pub: something new"),
    ],
)
def test_each_failure_is_said_in_words(message: str, reason: str) -> None:
    assert signing._reason(message, KEY).startswith(reason)


def test_the_fingerprint_is_the_sha256_of_the_public_pem(tmp_path: Path) -> None:
    """What `sha256sum key.pub` prints, and what a bundle's publicKey.hint holds."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = tmp_path / "k.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert signing.key_fingerprint(private) == hashlib.sha256(pem).hexdigest()
    assert signing.fingerprint(key.public_key()) == hashlib.sha256(pem).hexdigest()
    (tmp_path / "not-a-key.pem").write_text("hello")
    assert signing.key_fingerprint(tmp_path / "not-a-key.pem") is None


def test_an_unsigned_directory_is_refused_before_anything_is_read(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"\0")
    with pytest.raises(signing.SigningError, match="it is not signed"):
        signing.verify(tmp_path, [KEY], "m:v")
