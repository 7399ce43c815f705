"""The method registry: one file per method, one line per method here.

The key, the file name and the recipe's `method` literal are the same string.
"""

from core.adapt.methods import adapter, compacter, full, layernorm, linear_probe, lora, prompt_tuning, zero_shot
from core.adapt.methods.base import LayerNormMode, Method, ParamCount, RecipeBase

METHODS: dict[str, Method] = {
    "zero_shot": zero_shot.METHOD,
    "linear_probe": linear_probe.METHOD,
    "prompt_tuning": prompt_tuning.METHOD,
    "layernorm": layernorm.METHOD,
    "adapter": adapter.METHOD,
    "compacter": compacter.METHOD,
    "full": full.METHOD,
    "lora": lora.METHOD,
}

__all__ = ["METHODS", "LayerNormMode", "Method", "ParamCount", "RecipeBase"]
