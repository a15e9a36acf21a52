"""Published tokenizers: a suite's tokenizer weights under ``results/<suite>/tokenizer/<cache key>/`` (weights only,
its config and metrics, and a SHA-256), found by the generator stage when the local tokenizer cache has no entry
of that key, verified before it is loaded (lab/sweeps/records.py publishes them)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from lab.core.registry import ConfigError
from lab.runtime.files import ROOT

TOKENIZER_FILE = "tokenizer.ckpt"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def published_tokenizer(key: str, roots: list[Path] | None = None) -> Path | None:
    """A published tokenizer of this cache key under ``results/*/tokenizer/<key>/``, its hash verified.
    -> the weights file; None when none is published; ConfigError when one is there but truncated or altered."""
    for root in roots or [Path(os.environ.get("BITLAB_RESULTS") or ROOT / "results")]:
        for meta in sorted(Path(root).glob(f"*/tokenizer/{key}/tokenizer.json")):
            try:
                info = json.loads(meta.read_text())
                f = meta.parent / str(info["file"])
                want = str(info["sha256"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ConfigError(f"{meta} is malformed ({type(e).__name__}); restore it from git or delete "
                                  f"{meta.parent} to train the tokenizer anew.") from None
            if not f.is_file():
                raise ConfigError(f"{meta.parent} names {f.name}, which is missing; restore it from git or delete "
                                  f"{meta.parent} to train the tokenizer anew.")
            got = sha256_of(f)
            if got != want:
                raise ConfigError(
                    f"The published tokenizer {f} does not match its recorded SHA-256 (truncated or altered: "
                    f"{got[:12]}... != {want[:12]}...). Nothing was trained. Restore it (git checkout -- {f}) or "
                    f"delete {meta.parent} to train the tokenizer anew.")
            return f
    return None


def install_published_tokenizer(weights: Path, tdir: Path) -> None:
    """Make a verified published tokenizer the cache entry ``tdir`` (checkpoint, config, metrics), atomically."""
    tmp = tdir.with_name(f".{tdir.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "checkpoints").mkdir(parents=True)
    shutil.copy2(weights, tmp / "checkpoints" / "best.ckpt")
    for f in ("config.yaml", "metrics.json"):
        shutil.copy2(weights.parent / f, tmp / f)
    (tmp / "published_from.txt").write_text(str(weights.parent) + "\n")
    if tdir.exists():
        shutil.rmtree(tdir)
    tmp.rename(tdir)
