"""Output side: plans, encodings, the GGUF and npz writers, and safe (atomic) output.

* :mod:`.plan` decides every tensor's encoding, tiles and size (and checks a given kcfg) up front;
* the per-tensor encodings live in the core, :mod:`tmac_convert.format.encodings`;
* :mod:`.gguf_writer` / :mod:`.npz_writer` are the containers (:func:`.base.get_writer` by name);
* :mod:`.tokenizer` reads the vocabulary (hyper-parameters: :mod:`tmac_convert.archs`; ``tmac.*`` keys:
  :mod:`tmac_convert.format.tmac_keys`);
* :mod:`.atomic` writes to temporary files in the target folder and renames them at the end.
"""
