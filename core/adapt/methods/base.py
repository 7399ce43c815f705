"""What every adaptation method shares: its recipe fields and its registry entry.

This module is deliberately torch-free so that the API can build its request schema (and OpenAPI
docs) from the method registry without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from core.adapt.modules import Head

LayerNormMode = Literal["none", "joint", "init"]

# Appendix A.3: 100 epochs in the low-data regime (up to 16 shots), 50 in the high-data regime.
LOW_DATA_MAX_SHOTS = 16


def paper_epochs(shots: int | None) -> int:
    """Appendix A.3's epoch rule: 100 in the low-data regime (up to 16 shots), 50 above."""
    return 100 if shots is None or shots <= LOW_DATA_MAX_SHOTS else 50


# Most epochs a stage trains, given or derived (each epoch also runs a validation pass).
MAX_EPOCHS = 1000


class ScheduleError(ValueError):
    """A recipe, valid on its own, whose schedule on a given dataset is out of range; the message says
    which recipe fields fix it."""


class RecipeBase(BaseModel):
    """Hyperparameters common to every method (defaults from appendix A.3 of the paper)."""

    model_config = ConfigDict(extra="forbid")

    method: str
    layernorm: LayerNormMode = Field(
        "none",
        description="Combine with LayerNorm tuning: 'none', 'joint' (LayerNorm parameters trained in the "
        "same stage) or 'init' (a LayerNorm-only stage first; its result initializes this method).",
    )
    shots: int | None = Field(
        None, ge=1, description="Training images per class (k-shot sampling); null uses every training image."
    )
    seed: int = Field(0, ge=0, description="Seed for k-shot sampling, initialization and data order.")
    epochs: int | None = Field(
        None, ge=0, le=MAX_EPOCHS, description="Training epochs; null: 100 up to 16 shots, 50 above (appendix A.3)."
    )
    init_epochs: int | None = Field(
        None, ge=1, le=MAX_EPOCHS, description="Epochs of the LayerNorm stage when layernorm='init'; null: same as epochs."
    )
    lr: float | None = Field(None, gt=0, le=1.0, description="AdamW learning rate; null: the method's default.")
    weight_decay: float = Field(0.02, ge=0, le=1.0, description="AdamW weight decay.")
    batch_size: int = Field(32, ge=1, le=4096, description="Training batch size.")
    val_per_class: int | None = Field(
        None,
        ge=1,
        description="Validation images per class when the dataset has no val split; null: shots up to 16 "
        "shots, shots/10 above (appendix A.3).",
    )
    feature_views: int | None = Field(
        2,
        ge=1,
        le=100,
        description="While the image encoder is frozen, encode this many augmented views of the training set "
        "once and cycle through them across epochs; null runs the image encoder on every step.",
    )
    templates: list[str] | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Prompt templates with '{}' for the class name; null: the method's default.",
    )

    # Per-method defaults, overridden by subclasses.
    default_lr: ClassVar[float] = 5e-4
    supports_layernorm: ClassVar[bool] = True

    @field_validator("templates")
    @classmethod
    def _templates_have_slot(cls, templates: list[str] | None) -> list[str] | None:
        for template in templates or ():
            if template.count("{}") != 1:
                raise ValueError(f"template {template!r} must contain exactly one '{{}}' for the class name")
        return templates

    @field_validator("layernorm")
    @classmethod
    def _layernorm_applies(cls, mode: str) -> str:
        if mode != "none" and not cls.supports_layernorm:
            method = cls.model_fields["method"].default
            raise ValueError(f"method '{method}' cannot be combined with LayerNorm tuning (use 'none')")
        return mode

    def resolved_epochs(self, train_size: int | None = None) -> int:
        """Epochs to train. `train_size` (training images, when known) is for methods whose schedule is
        given in optimizer steps rather than epochs (they raise ScheduleError when that comes to more
        than MAX_EPOCHS); the paper's is not."""
        if self.epochs is not None:
            return self.epochs
        return paper_epochs(self.shots)

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else self.default_lr


@dataclass(frozen=True)
class ParamCount:
    """A trainable-parameter count on ViT-B/16 (Figure 2 of the paper): `fixed + per_class * classes`."""

    fixed: int
    per_class: int = 0

    def at(self, classes: int) -> int:
        return self.fixed + self.per_class * classes

    def __str__(self) -> str:
        if self.per_class and self.fixed:
            return f"{self.fixed:,} + {self.per_class:,} × classes"
        return f"{self.per_class:,} × classes" if self.per_class else f"{self.fixed:,}"


@dataclass(frozen=True)
class Method:
    """A registry entry: everything about a method that is not its torch code lives here, in its file.

    `build(clip, classnames, tokenizer, recipe)` freezes nothing itself (the trainer freezes the whole
    model first), makes the method's parameters trainable or injects new ones, and returns the head that
    turns image features into class logits.

    `summary` is the method's row in the README table and in `clipadapt methods`; `vit_b16` its
    trainable-parameter count on ViT-B/16 with default settings (checked on the real architecture by
    tests/core/adapt/test_counts.py); `trains` a regular expression matching the names (in
    `AdaptedModel.named_parameters()`) of exactly the parameters it trains, which the method tests check
    `build` against; `merge` (optional) folds the method's trained structure into the base weights once
    training is over.
    """

    name: str
    config: type[RecipeBase]
    summary: str
    build: Callable[[Any, list[str], Any, Any], "Head"]
    vit_b16: ParamCount
    trains: str
    # For prediction: fold what the method added into the base weights (e.g. low-rank updates), so a
    # loaded artifact runs as fast as the base model. Called on every artifact after its tensors are
    # loaded; it may remove the method's parameters. None: nothing to fold.
    merge: Callable[[Any], None] | None = None
