"""Model architectures: one registered class per architecture, found by ``config.json``'s ``architectures``.

* :mod:`.base` — :class:`Architecture` (the registry), :class:`Generic`, :func:`architecture_for`;
* :mod:`.llama` (Llama, Mistral), :mod:`.qwen2`, :mod:`.bitnet`, :mod:`.phi3` — one file each;
* :mod:`.naming` — the gguf name tables and the q/k permutation; :mod:`.hparams` — typed config reads.

Importing this package registers every built-in architecture.
"""

from .base import Architecture, Generic, architecture_class, architecture_for, role
from . import bitnet, llama, phi3, qwen2  # noqa: F401 - register the built-in architectures

__all__ = ["Architecture", "Generic", "architecture_class", "architecture_for", "role"]
