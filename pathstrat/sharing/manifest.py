"""A package's file manifest and its optional Ed25519 signature.

``MANIFEST.sha256`` lists ``<sha256>  <relative path>`` for every file of the package except the
manifest and the signature, sorted by path, in ``sha256sum`` format (so ``sha256sum -c`` checks it
too). ``SIGNATURE`` holds the base64 Ed25519 signature of the manifest's bytes; the signer's public
key is not trusted from the package: the partner passes the key they were given.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from pathstrat.errors import PathstratError
from pathstrat.io import sha256_file, write_text_atomic

MANIFEST = "MANIFEST.sha256"
SIGNATURE = "SIGNATURE"
UNLISTED = frozenset({MANIFEST, SIGNATURE})


class PackageError(PathstratError, ValueError):
    """A model package is malformed, tampered with, or not signed when a signature is required."""


def package_files(root: Path) -> list[str]:
    """Relative POSIX paths of every regular file under ``root`` except manifest and signature."""
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            raise PackageError(f"Package '{root}' holds a symbolic link ({p.relative_to(root)}); "
                               "packages hold plain files only.")
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            if rel not in UNLISTED:
                out.append(rel)
    return out


def write_manifest(root: Path) -> Path:
    """Hash every file of the package into ``MANIFEST.sha256``."""
    lines = [f"{sha256_file(root / rel)}  {rel}" for rel in package_files(root)]
    return write_text_atomic(root / MANIFEST, "\n".join(lines) + "\n")


def read_manifest(root: Path) -> dict[str, str]:
    p = root / MANIFEST
    if not p.is_file():
        raise PackageError(f"Package '{root}' has no {MANIFEST}; it was not written by `pathstrat "
                           "package` or has been altered. Ask the sponsor for the package again.")
    out: dict[str, str] = {}
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64 or not rel:
            raise PackageError(f"Package '{root}': {MANIFEST} line {n} is not '<sha256>  <path>'.")
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise PackageError(f"Package '{root}': {MANIFEST} names '{rel}' outside the package.")
        out[rel] = digest
    return out


def check_files(root: Path) -> None:
    """Every listed file present with its hash, nothing unlisted: else :class:`PackageError`."""
    listed = read_manifest(root)
    present = set(package_files(root))
    missing = sorted(set(listed) - present)
    extra = sorted(present - set(listed))
    changed = sorted(rel for rel in set(listed) & present if sha256_file(root / rel) != listed[rel])
    problems = ([f"changed: {', '.join(changed)}"] if changed else []) + \
               ([f"missing: {', '.join(missing)}"] if missing else []) + \
               ([f"not in the manifest: {', '.join(extra)}"] if extra else [])
    if problems:
        raise PackageError(f"Package '{root}' does not match its {MANIFEST} ({'; '.join(problems)}): "
                           "it was altered after it was packaged. Do not use it; ask the sponsor "
                           "for the package again.")


# --------------------------------------------------------------------------- Ed25519 signatures

def _need_crypto() -> None:
    from pathstrat.errors import import_optional

    import_optional("cryptography", "sign", "package signatures")


def generate_keypair(private_path: str | os.PathLike, public_path: str | os.PathLike) -> None:
    """Write a new Ed25519 key pair (PEM; the private key unencrypted, mode 0600)."""
    _need_crypto()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    Path(private_path).write_bytes(priv)
    os.chmod(private_path, 0o600)
    Path(public_path).write_bytes(pub)


def _load_key(path: str | os.PathLike, private: bool):
    _need_crypto()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    data = Path(path).read_bytes()
    try:
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except (ValueError, TypeError) as exc:
        raise PackageError(f"'{path}' is not a PEM {'private' if private else 'public'} key "
                           f"({exc}); make one with `pathstrat package keygen`.") from exc
    want = Ed25519PrivateKey if private else Ed25519PublicKey
    if not isinstance(key, want):
        raise PackageError(f"'{path}' is not an Ed25519 key; make one with `pathstrat package keygen`.")
    return key


def sign(root: Path, private_key: str | os.PathLike) -> Path:
    """Sign the package's manifest with an Ed25519 private key (PEM) into ``SIGNATURE``."""
    key = _load_key(private_key, private=True)
    sig = key.sign((root / MANIFEST).read_bytes())
    return write_text_atomic(root / SIGNATURE, base64.b64encode(sig).decode() + "\n")


def check_signature(root: Path, public_key: str | os.PathLike | None, *, required: bool) -> str:
    """``"verified"``, ``"unsigned"`` or ``"not checked"`` (signed, no key given); raises
    :class:`PackageError` for a bad signature, or a missing one when ``required``."""
    sig_path = root / SIGNATURE
    if not sig_path.is_file():
        if required:
            raise PackageError(f"Package '{root}' is not signed, but a signature is required "
                               "(`require_signature`); ask the sponsor for the signed package.")
        return "unsigned"
    if public_key is None:
        if required:
            raise PackageError(f"Package '{root}' is signed; pass the sponsor's public key "
                               "(`public_key`) to verify it.")
        return "not checked"
    key = _load_key(public_key, private=False)
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(base64.b64decode(sig_path.read_text().strip()), (root / MANIFEST).read_bytes())
    except (InvalidSignature, ValueError) as exc:
        raise PackageError(f"Package '{root}': the signature does not match the manifest for the "
                           f"public key '{public_key}': the package was altered or signed by "
                           "someone else. Do not use it.") from exc
    return "verified"
