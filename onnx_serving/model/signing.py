"""Signed models: a stored model's files signed with the OpenSSF `model-signing` library, and
verified before the model is served.

A signature is a Sigstore bundle (`model.sig`) beside the files BentoML stores for the model
(`model.onnx`, `model.yaml` with its metadata and labels, ...), listing every file with its
SHA-256 and signed with an EC private key or a certificate's key, offline: no Sigstore
service is called. It travels with the model into bentos and images. Verifying checks the
bundle's signature against the trusted public keys or certificate chains (MODEL_VERIFY_KEY,
several for rotation) and then every file against the list: a file changed, added or removed
after signing, a signature by another key, or no signature at all, each refuses the start
with its reason (SigningError).

`model-signing` is the `signing` extra: installed by `make venv`, and put into an image when
its model is signed (scripts/build_image.sh). The private key is read only to sign; it is
never copied, logged or stored.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

SIGNATURE_FILE = "model.sig"


class SigningError(RuntimeError):
    """A model that can't be signed, or doesn't verify: the message says which and why."""


def _library() -> Any:
    try:
        import model_signing  # noqa: F401  (the `signing` extra)
        from model_signing import hashing, signing, verifying
    except ImportError as exc:
        raise SigningError(
            f"signing and verifying models need the `signing` extra ({exc}): "
            "pip install -e '.[signing]' (make venv installs it; an image gets it when its "
            "model is signed)"
        ) from None
    return hashing, signing, verifying


def _hashing(hashing: Any) -> Any:
    # The bundle lies beside the files it lists: it is not one of them.
    return hashing.Config().set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False)


def is_signed(model_dir: Path) -> bool:
    return (Path(model_dir) / SIGNATURE_FILE).is_file()


def sign(
    model_dir: Path, key: Path, certificate: Path | None = None, chain: list[Path] | None = None
) -> dict[str, str]:
    """Sign every file of `model_dir` with the EC private key `key` (PEM), or with the key of
    `certificate` (and its `chain` up to a root); writes model.sig there. Returns who
    signed, as /metadata shows it."""
    hashing, signing, _ = _library()
    for path in (key, certificate, *(chain or [])):
        if path is not None and not Path(path).is_file():
            raise SigningError(f"{path}: no such file")
    config = signing.Config()
    try:
        if certificate is None:
            config.use_elliptic_key_signer(private_key=key)
        else:
            config.use_certificate_signer(
                private_key=key, signing_certificate=certificate, certificate_chain=chain or []
            )
        config.set_hashing_config(_hashing(hashing)).sign(model_dir, model_dir / SIGNATURE_FILE)
    except (ValueError, TypeError) as exc:
        # The message names the key file, never its contents.
        raise SigningError(f"could not sign with {key}: {_first_line(exc)}") from None
    return signer(model_dir)


def verify(model_dir: Path, trusted: list[Path], what: str) -> dict[str, str]:
    """Verify `model_dir`'s signature with the first of `trusted` (public keys or certificate
    chains, PEM) that signed it; SigningError with the reason otherwise. `what` names the
    model in the messages."""
    bundle = Path(model_dir) / SIGNATURE_FILE
    if not bundle.is_file():
        raise SigningError(
            f"refusing to serve {what}: it is not signed (no {SIGNATURE_FILE} beside its files), "
            "and MODEL_VERIFY_KEY asks for a signature: sign it with `python train_and_save.py "
            "sign TAG --key PRIVATE_KEY`"
        )
    hashing, _, verifying = _library()
    reasons = []
    for path in trusted:
        config = verifying.Config()
        try:
            if _is_certificate(path):
                config.use_certificate_verifier(certificate_chain=[path])
            else:
                config.use_elliptic_key_verifier(public_key=path)
            config.set_hashing_config(_hashing(hashing)).verify(model_dir, bundle)
        except Exception as exc:  # model-signing raises ValueError, and others on bad input
            reasons.append(_reason(str(exc), path))
            continue
        bundle_json = _bundle(model_dir)  # read once, for both
        return {
            **signer(model_dir, bundle_json),
            "verified_with": path.name,
            "files": signed_files(model_dir, bundle_json),
        }
    # A changed file is the news, whatever the other keys said.
    reasons.sort(key=lambda r: not r.startswith("a file"))
    raise SigningError(f"refusing to serve {what}: {reasons[0]}")


def _bundle(model_dir: Path) -> Any:
    return json.loads((Path(model_dir) / SIGNATURE_FILE).read_text())


def signer(model_dir: Path, bundle: Any = None) -> dict[str, str]:
    """Who signed: the public key's SHA-256 fingerprint, or the certificate's subject
    (`bundle`: the signature file, if it was read already)."""
    try:
        material = (bundle if bundle is not None else _bundle(model_dir))["verificationMaterial"]
    except (OSError, ValueError, KeyError, TypeError):
        return {"signed_by": "unknown (unreadable signature)"}
    if "publicKey" in material:
        return {"signed_by": f"key sha256:{material['publicKey'].get('hint', '?')}"}
    chain = material.get("x509CertificateChain", {}).get("certificates", [])
    if chain:
        from cryptography import x509

        leaf = x509.load_der_x509_certificate(base64.b64decode(chain[0]["rawBytes"]))
        return {"signed_by": f"certificate {leaf.subject.rfc4514_string()}"}
    return {"signed_by": "unknown"}


def signed_files(model_dir: Path, bundle: Any = None) -> dict[str, str]:
    """The files a (verified) bundle lists, with their SHA-256: what the Spark executors check
    the file shipped to them against."""
    envelope = (bundle if bundle is not None else _bundle(model_dir))["dsseEnvelope"]
    statement = json.loads(base64.b64decode(envelope["payload"]))
    return {r["name"]: r["digest"] for r in statement["predicate"]["resources"]}


def fingerprint(key: Any) -> str:
    """A public key's fingerprint, as model-signing names the key in its bundles: the
    SHA-256 of its PEM (SubjectPublicKeyInfo), so `sha256sum key.pub` of a key that openssl
    wrote gives it too."""
    from cryptography.hazmat.primitives import serialization

    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(pem).hexdigest()


def bundle_digest(model_dir: Path) -> str | None:
    """The signature file's SHA-256, which names a signature (an optimized variant records
    its parent's)."""
    bundle = Path(model_dir) / SIGNATURE_FILE
    return hashlib.sha256(bundle.read_bytes()).hexdigest() if bundle.is_file() else None


def _is_certificate(path: Path) -> bool:
    return b"BEGIN CERTIFICATE" in Path(path).read_bytes()


def _reason(message: str, key: Path) -> str:
    """model-signing's message, in words that say what happened."""
    # model-signing's messages quote a list of problems: names come out of reprs.
    if changed := re.search(r"Hash mismatch for \\*['\"]([^'\"\\]+)", message):
        return f"a file changed after it was signed: {changed.group(1)}"
    if added := re.search(r"Extra files found in model [^:]*: ([^\]\"'\\]+)", message):
        return f"a file was added after signing: {added.group(1).strip()}"
    if "Missing files" in message or "missing" in message.lower():
        return f"a signed file is missing: {_first_line(message)}"
    if "Key mismatch" in message or "certificate" in message.lower():
        return f"it was signed by another key than {key.name} ({_first_line(message)})"
    return f"its signature does not verify with {key.name}: {_first_line(message)}"


def _first_line(exc: object) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def key_fingerprint(private_key: Path) -> str | None:
    """The fingerprint of a private key's public half (`fingerprint`), or None when the file
    is not an unencrypted PEM private key."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(Path(private_key).read_bytes(), password=None)
    except (ValueError, TypeError, OSError):
        return None
    return fingerprint(key.public_key())


def sign_stored(tag: str, key: Path, certificate: Path | None, chain: list[Path]) -> str:
    """Sign the store's entry for `tag` (after checking its SHA-256); one line saying so."""
    from onnx_serving.model import store as model_store

    stored = model_store.get_verified(tag)
    model_dir = Path(stored.path)
    again = " (its earlier signature replaced)" if is_signed(model_dir) else ""
    who = sign(model_dir, key, certificate, chain)
    return f"signed {stored.tag}{again}: {who['signed_by']}"


def main(argv: list[str]) -> int:
    """`train_and_save.py sign TAG --key KEY` and `train_and_save.py verify TAG --key PUB`."""
    import argparse

    from onnx_serving.model import store as model_store

    command, argv = argv[0], argv[1:]
    parser = argparse.ArgumentParser(
        prog=f"train_and_save.py {command}",
        description="Sign a stored model's files (model-signing, offline)"
        if command == "sign"
        else "Verify a stored model's signature, as the service does at start",
    )
    parser.add_argument("tag", help="the stored model, NAME:VERSION or NAME:latest")
    if command == "sign":
        parser.add_argument(
            "--key", type=Path, required=True, help="EC private key (PEM), never stored"
        )
        parser.add_argument(
            "--certificate", type=Path, help="sign as this certificate (of --key's public key)"
        )
        parser.add_argument(
            "--chain", type=Path, action="append", default=[], help="its chain; repeatable"
        )
    else:
        parser.add_argument(
            "--key",
            required=True,
            help="trusted public keys or certificate chains (PEM), comma-separated",
        )
    args = parser.parse_args(argv)
    model_store.use_project_store()
    try:
        if command == "sign":
            print(sign_stored(args.tag, args.key, args.certificate, args.chain))
        else:
            stored = model_store.get_verified(args.tag)
            trusted = [Path(p.strip()) for p in args.key.split(",") if p.strip()]
            who = verify(Path(stored.path), trusted, str(stored.tag))
            print(f"verified {stored.tag}: {who['signed_by']} (with {who['verified_with']})")
    except (SigningError, model_store.ModelNotFound, model_store.ModelIntegrityError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
