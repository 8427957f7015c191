"""Where a model comes from: a local folder, a single file, or a Hugging Face repo id.

Repo ids are downloaded with ``huggingface_hub.snapshot_download`` restricted to safetensors, JSON
and tokenizer files (never pickles, never anything else); the hub cache, ``HF_HOME``/``HF_HUB_CACHE``
and ``HF_HUB_OFFLINE`` are honoured because huggingface_hub itself reads them.  Repo ids are
validated first, so a name can never point outside the cache.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import TmacError

#: What a hub download fetches: weights, configs and tokenizer files only.
ALLOW_PATTERNS: tuple[str, ...] = ("*.safetensors", "*.json", "tokenizer.model", "tokenizer*", "*.tiktoken",
                                   "vocab.*", "merges.txt")

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

# Hub naming rules: [namespace/]name, each part of letters, digits, '-', '_', '.', not starting or
# ending with '-' or '.', no '--' or '..', at most 96 characters.
_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"^(?:{_PART}/)?{_PART}$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$")


def is_repo_id(text: str) -> bool:
    """True for a syntactically valid hub repo id (``owner/name`` or ``name``), no path tricks."""
    return bool(_REPO_ID.match(text)) and ".." not in text and "--" not in text


def resolve(source: str | Path, *, cache_dir: str | Path | None = None, revision: str | None = None) -> Path:
    """A local path for ``source``: the path itself when it exists, else a hub snapshot folder.

    Raises :class:`TmacError` for a missing local path, an invalid repo id, or a download that fails
    (including "not in the cache" when ``HF_HUB_OFFLINE=1``).
    """
    if not str(source).strip():
        raise TmacError("empty source: give a folder, a file or a repo id", rule="source exists")
    p = Path(source).expanduser()
    if p.exists():
        return p
    text = str(source)
    looks_local = text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1 or \
        p.suffix.lower() in (".safetensors", ".gguf", ".json", ".npz") + PICKLE_SUFFIXES
    if looks_local or not is_repo_id(text):
        if looks_local:
            raise TmacError("no such file or folder", file=text, rule="source exists")
        raise TmacError("neither an existing path nor a valid Hugging Face repo id (owner/name)", file=text,
                        rule="source exists")
    if revision is not None and (not _REVISION.match(revision) or ".." in revision):
        raise TmacError(f"invalid revision {revision!r}", file=text, rule="valid revision")
    return _download(text, cache_dir=cache_dir, revision=revision)


def _download(repo_id: str, *, cache_dir: str | Path | None, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    try:
        folder = snapshot_download(repo_id=repo_id, revision=revision,
                                   cache_dir=str(cache_dir) if cache_dir is not None else None,
                                   allow_patterns=list(ALLOW_PATTERNS))
    except LocalEntryNotFoundError:
        raise TmacError("not in the local Hugging Face cache and the hub cannot be reached (HF_HUB_OFFLINE is set "
                        "or there is no network)", file=repo_id, rule="hub download") from None
    except GatedRepoError:
        raise TmacError("the repository is gated: accept its terms on the hub and log in (HF_TOKEN)", file=repo_id,
                        rule="hub download") from None
    except RepositoryNotFoundError:
        raise TmacError("no such repository on the hub (or it is private)", file=repo_id,
                        rule="hub download") from None
    except RevisionNotFoundError:
        raise TmacError(f"no revision {revision!r}", file=repo_id, rule="hub download") from None
    except (OSError, ValueError) as e:
        raise TmacError(f"download failed: {e}", file=repo_id, rule="hub download") from None
    return Path(folder)


def refuse_pickles(path: Path) -> None:
    """Raise for a pickled checkpoint (never unpickled: loading one can run arbitrary code).

    A file with a pickle suffix is refused; so is a folder holding pickled weights and no
    safetensors or GGUF files.
    """
    msg = ("pickled PyTorch checkpoints (.bin/.pt/.pth) are refused because unpickling an untrusted file can "
           "run arbitrary code; convert the model to safetensors (e.g. save_pretrained(..., "
           "safe_serialization=True)) and try again")
    if path.is_file():
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise TmacError(msg, file=str(path), rule="safetensors only")
        return
    if path.is_dir():
        has_safe = any(path.glob("*.safetensors")) or any(path.glob("*.gguf")) or any(path.glob("*.npz"))
        pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles and not has_safe:
            raise TmacError(msg + f" (found {', '.join(pickles[:3])})", file=str(path), rule="safetensors only")
