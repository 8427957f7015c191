"""Where a model comes from: a local folder, a single file, or a Hugging Face repo id.

Repo ids are downloaded with ``huggingface_hub.snapshot_download`` restricted to safetensors, JSON
and tokenizer files (never pickles, never anything else); the hub cache, ``HF_HOME``/``HF_HUB_CACHE``
and ``HF_HUB_OFFLINE`` are honoured because huggingface_hub itself reads them.  Repo ids are
validated first, so a name can never point outside the cache, and so is the commit id the hub
answers (huggingface_hub would build cache paths from it unchecked).
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
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def is_repo_id(text: str) -> bool:
    """True for a syntactically valid hub repo id (``owner/name`` or ``name``), no path tricks."""
    return bool(_REPO_ID.match(text)) and ".." not in text and "--" not in text


def resolve(source: str | Path, *, cache_dir: str | Path | None = None, revision: str | None = None) -> Path:
    """A local path for ``source``: the path itself when it exists, else a hub snapshot folder.

    Raises :class:`TmacError` for a missing local path (anything that looks like one: starts with
    ``.``, ``/`` or ``~``, ends in a model file suffix, or names a folder that exists here), an
    invalid repo id, or a download that fails; the message says which of these it is, and for a
    hub id whether it is absent from the hub or could not be fetched (offline), with the command
    that fetches it.
    """
    if not str(source).strip():
        raise TmacError("empty source: give a folder, a file or a repo id", rule="source exists")
    p = Path(source).expanduser()
    if p.exists():
        return p
    text = str(source)
    looks_local = text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1 or \
        p.suffix.lower() in (".safetensors", ".gguf", ".json", ".npz") + PICKLE_SUFFIXES or \
        ("/" in text and Path(text.split("/", 1)[0]).expanduser().exists())
    if looks_local or not is_repo_id(text):
        if looks_local:
            raise TmacError("no such file or folder" + _nearest_existing(p), file=text, rule="source exists")
        raise TmacError("no such file or folder, and not a valid Hugging Face repo id (owner/name) either",
                        file=text, rule="source exists")
    if revision is not None and (not _REVISION.match(revision) or ".." in revision):
        raise TmacError(f"invalid revision {revision!r}", file=text, rule="valid revision")
    return _download(text, cache_dir=cache_dir, revision=revision)


def _nearest_existing(p: Path) -> str:
    """``" ('a/b' exists, but holds no 'c')"`` for the deepest existing ancestor of ``p``, or ``""``."""
    parent = p.parent
    while str(parent) not in ("", ".") and not parent.exists():
        p, parent = parent, parent.parent
    if str(parent) in ("", ".") or parent == p:
        return ""
    return f" ('{parent}' exists, but holds no '{p.name}')"


def fetch_command(repo_id: str, revision: str | None = None) -> str:
    """The shell command that downloads what :func:`resolve` would fetch of ``repo_id`` into the hub cache."""
    import huggingface_hub

    m = re.match(r"(\d+)\.(\d+)", str(huggingface_hub.__version__))
    cli = "hf" if m is None or (int(m.group(1)), int(m.group(2))) >= (0, 34) else "huggingface-cli"  # `hf` since 0.34
    rev = f" --revision {revision}" if revision else ""
    return f"{cli} download {repo_id}{rev} --include " + " ".join(f"'{pat}'" for pat in ALLOW_PATTERNS)


def _storage_folder(repo_id: str, cache_dir: str | Path | None) -> Path:
    """The hub cache's folder of a model repo (``<cache>/models--owner--name``)."""
    from huggingface_hub import constants

    return Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))


def _download(repo_id: str, *, cache_dir: str | Path | None, revision: str | None) -> Path:
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    not_local = "no such local file or folder, so it was taken as a Hugging Face repo id: "
    fetch = fetch_command(repo_id, revision)
    offline = bool(constants.HF_HUB_OFFLINE)
    unreachable: str | None = "HF_HUB_OFFLINE is set" if offline else None
    commit = revision if revision is not None and _COMMIT.match(revision) else None
    try:
        if commit is None and not offline:
            # huggingface_hub builds cache paths from the hub's commit id unchecked (a hostile endpoint
            # could answer '../..'): resolve it first, check it, and hand snapshot_download the commit.
            try:
                sha = huggingface_hub.HfApi().repo_info(repo_id=repo_id, revision=revision or "main").sha
            except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError):
                raise
            except Exception as e:  # noqa: BLE001 - no network, hub down, proxy: fall back to the cache
                unreachable = f"the hub cannot be reached: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            else:
                if not isinstance(sha, str) or not _COMMIT.match(sha):
                    raise TmacError(f"the hub answered commit id {sha!r}, which is not 40 hex digits; refusing to "
                                    "use it as a cache path", file=repo_id, rule="hub download")
                commit = sha
        folder = Path(huggingface_hub.snapshot_download(
            repo_id=repo_id, revision=commit or revision, cache_dir=str(cache_dir) if cache_dir is not None else None,
            allow_patterns=list(ALLOW_PATTERNS), **({"local_files_only": True} if unreachable and not offline else {})))
    except LocalEntryNotFoundError:
        how = f"`{fetch}` (with HF_HUB_OFFLINE unset)" if offline else f"`{fetch}` where there is network"
        raise TmacError(f"{not_local}it is not in the local Hugging Face cache and "
                        f"{unreachable or 'the hub cannot be reached'}; fetch it with {how}, or give the model's "
                        "local folder", file=repo_id, rule="hub download") from None
    except GatedRepoError:
        raise TmacError(f"{not_local}the repository is gated: accept its terms on the hub, log in (HF_TOKEN), then "
                        f"`{fetch}`", file=repo_id, rule="hub download") from None
    except RepositoryNotFoundError:
        raise TmacError(f"{not_local}no such repository on the hub (or it is private: log in with HF_TOKEN)",
                        file=repo_id, rule="hub download") from None
    except RevisionNotFoundError:
        raise TmacError(f"{not_local}the repository has no revision {revision!r}", file=repo_id,
                        rule="hub download") from None
    except TmacError:
        raise
    except (OSError, ValueError) as e:
        raise TmacError(f"download failed: {e}", file=repo_id, rule="hub download") from None
    storage = _storage_folder(repo_id, cache_dir)
    inside = storage.resolve() in folder.resolve().parents
    if inside and folder.parent.name == "snapshots" and not _COMMIT.match(folder.name):
        raise TmacError(f"the hub cache names snapshot {folder.name!r}, not a commit id", file=repo_id,
                        rule="hub download")
    if inside and commit is not None and revision != commit:
        _record_ref(storage, revision or "main", commit)
    return folder


def _record_ref(storage: Path, ref: str, commit: str) -> None:
    """Remember ``ref -> commit`` in the cache, as snapshot_download does, so that offline runs find it."""
    path = storage / "refs" / ref
    if storage.resolve() not in path.resolve().parents:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text() != commit:
            path.write_text(commit)
    except OSError:
        pass  # a read-only cache still gave us the files


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
