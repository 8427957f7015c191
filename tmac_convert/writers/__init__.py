"""Output side: plans, encodings, the GGUF and npz writers, and safe (atomic) output.

* :mod:`.plan` decides every tensor's encoding, tiles and size (and checks a given kcfg) up front;
* :mod:`.encodings` holds the per-tensor encodings, registered by name (``tmac``, ``f16``, ``f32``...);
* :mod:`.gguf_writer` / :mod:`.npz_writer` are the containers (:func:`.base.get_writer` by name);
* :mod:`.gguf_meta` writes hyper-parameters, tokenizer and the self-describing ``tmac.*`` keys;
* :mod:`.atomic` writes to temporary files in the target folder and renames them at the end.
"""
