"""The T-MAC layout engine: Format A pack/unpack, layout rules, and tile configurations."""

from .constraints import bm_candidates, check_act_group, check_layout, kfactor_candidates
from .format_a import blob_nbytes, pack, scales_count, unpack, weight_nbytes
from .kcfg import Kcfg, KernelConfig, TileConfig, default_tiles, load_kcfg, load_preset, preset_names

__all__ = ["pack", "unpack", "blob_nbytes", "weight_nbytes", "scales_count", "check_layout", "check_act_group",
           "bm_candidates", "kfactor_candidates", "Kcfg", "KernelConfig", "TileConfig", "load_kcfg", "load_preset",
           "preset_names", "default_tiles"]
