"""Recipes: what a training job asks for, validated before anything runs.

`Recipe` is a union discriminated on `method` over every registered method plus `auto`, so the API's
request schema follows the registry and adding a method never touches the API. Torch-free.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, TypeAdapter

from core.adapt.methods import METHODS
from core.adapt.methods.base import LOW_DATA_MAX_SHOTS, RecipeBase


class AutoConfig(RecipeBase):
    """Let the service pick the recipe with the paper's section 6 guidance: it measures zero-shot
    accuracy on the validation split (similarity to the pre-training data) and counts shots per class
    (data regime), then picks a method combined with LayerNorm tuning as initialization."""

    method: Literal["auto"] = "auto"
    similarity_threshold: float = Field(
        0.55, ge=0, le=1, description="Zero-shot validation accuracy at or above which the data counts as similar (section 4)."
    )
    low_data_max_shots: int = Field(
        LOW_DATA_MAX_SHOTS, ge=1, description="Shots per class up to which the task is in the low-data regime."
    )
    supports_layernorm: ClassVar[bool] = False  # the chooser decides the LayerNorm combination
    summary: ClassVar[str] = "picks one of the above from zero-shot validation accuracy and shots per class"


Recipe = Annotated[
    Union[tuple(method.config for method in METHODS.values()) + (AutoConfig,)],  # noqa: UP007
    Field(discriminator="method"),
]

_recipe_adapter: TypeAdapter[RecipeBase] = TypeAdapter(Recipe)


def parse_recipe(data: dict[str, Any]) -> RecipeBase:
    """Validate a recipe from JSON-like data (raises pydantic.ValidationError naming the field)."""
    return _recipe_adapter.validate_python(data)


def method_names() -> list[str]:
    return [*METHODS, "auto"]
