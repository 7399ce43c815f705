"""The 'auto' recipe: the paper's section 6 guidance as a chooser.

Two measurements place a task in one of the paper's four regimes: the zero-shot accuracy on the
validation split (similarity to the pre-training data, threshold 55% as in section 4) and the shots per
class (low-data regime up to 16 shots). Every recommendation uses LayerNorm tuning as initialization,
as section 6 does, except where LayerNorm tuning alone is the recommendation.
"""

from __future__ import annotations

from typing import Any

from core.adapt.methods import RecipeBase
from core.adapt.recipe import AutoConfig, parse_recipe


def choose_recipe(auto: AutoConfig, zero_shot_accuracy: float, shots_per_class: int) -> tuple[RecipeBase, dict[str, Any]]:
    low_data = shots_per_class <= auto.low_data_max_shots
    similar = zero_shot_accuracy >= auto.similarity_threshold
    regime = f"{'low' if low_data else 'high'}-data ({shots_per_class} shots per class), " + (
        f"{'high' if similar else 'low'} similarity (zero-shot validation accuracy {zero_shot_accuracy:.1%})"
    )
    if low_data and similar:
        method, layernorm = "layernorm", "none"
        why = "zero-shot CLIP already fits the data and LayerNorm tuning is the strongest baseline in every regime (Figure 3)"
    elif low_data:
        method, layernorm = "compacter", "init"
        why = "in the low-data regimes the paper recommends compacters initialized with tuned LayerNorm (Figure 5, section 6)"
    else:
        method, layernorm = "linear_probe", "init"
        why = "in the high-data regimes the paper recommends a linear probe initialized with tuned LayerNorm (Figure 5, section 6)"
    common = auto.model_dump(include=set(RecipeBase.model_fields) - {"method", "layernorm"})
    recipe = parse_recipe({**common, "method": method, "layernorm": layernorm})
    decision = {
        "picked": f"{method}" + ("" if layernorm == "none" else f" + LayerNorm ({layernorm})"),
        "recipe": recipe.model_dump(mode="json"),
        "zero_shot_val_accuracy": zero_shot_accuracy,
        "shots_per_class": shots_per_class,
        "reason": f"{regime}: {why}",
    }
    return recipe, decision
