"""An adapted model, and how a recipe becomes one: a list of stages applied to a copy of the base.

Combinations with LayerNorm tuning are composition, not new methods (section 3.3): 'joint' makes the
LayerNorm parameters trainable in the method's own stage; 'init' runs a LayerNorm-only stage first,
whose tuned parameters stay in the model and initialize the method's stage.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from core.adapt.methods import METHODS, RecipeBase
from core.adapt.methods.layernorm import LayerNormConfig
from core.adapt.modules import Head, encode_images, layernorm_parameters, set_trainable, text_tower_parameters


@dataclass(frozen=True)
class Stage:
    name: str
    recipe: RecipeBase  # its `method` builds the stage
    joint_layernorm: bool
    epochs: int


def plan_stages(recipe: RecipeBase, train_size: int | None = None) -> list[Stage]:
    """The stages of a recipe; `train_size` (training images) for methods whose schedule is in steps."""
    epochs = recipe.resolved_epochs(train_size)
    main = Stage(recipe.method, recipe, joint_layernorm=recipe.layernorm == "joint", epochs=epochs)
    if recipe.layernorm != "init":
        return [main]
    shared = recipe.model_dump(include=set(RecipeBase.model_fields) - {"method", "layernorm", "epochs", "init_epochs", "lr"})
    init = LayerNormConfig(**shared, epochs=recipe.init_epochs or epochs)
    return [Stage("layernorm_init", init, joint_layernorm=False, epochs=init.resolved_epochs()), main]


class AdaptedModel(nn.Module):
    """CLIP adapted to a fixed list of classes: images -> logits.

    Split in two so the trainer can reuse work: `encode_images` (cacheable while the image tower is
    frozen) and `logits(features, class_embeddings)`, where `class_embeddings()` is cacheable while
    nothing on the text side trains.
    """

    def __init__(self, clip: nn.Module, head: Head, classnames: list[str], preprocess: dict):
        super().__init__()
        self.clip = clip
        self.head = head
        self.classnames = list(classnames)
        self.preprocess = preprocess  # image_size, mean, std of the base model

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return encode_images(self.clip, images, projected=self.head.projected)

    def class_embeddings(self) -> torch.Tensor | None:
        return self.head.class_embeddings(self.clip)

    def logits(self, features: torch.Tensor, class_embeddings: torch.Tensor | None) -> torch.Tensor:
        return self.head.logits(features, class_embeddings, self.clip)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(self.encode_images(images), self.class_embeddings())

    def image_tower_trains(self) -> bool:
        return any(p.requires_grad for p in self.clip.visual.parameters())

    def text_side_trains(self) -> bool:
        if not self.head.uses_text:
            return False
        return any(p.requires_grad for p in [*text_tower_parameters(self.clip), *self.head.parameters()])

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {name: p for name, p in self.named_parameters() if p.requires_grad}


def prepare_stage(clip: nn.Module, stage: Stage, classnames: list[str], tokenizer, preprocess: dict) -> AdaptedModel:
    """Freeze everything, then let the stage's method inject and unfreeze what it trains."""
    clip.requires_grad_(False)
    head = METHODS[stage.recipe.method].build(clip, classnames, tokenizer, stage.recipe)
    if stage.joint_layernorm:
        # Only the LayerNorms on the path to the logits: the linear probe never runs the text tower.
        set_trainable(layernorm_parameters(clip, image=True, text=head.uses_text))
    return AdaptedModel(clip, head, classnames, preprocess).to(next(clip.parameters()).device)


def build_adapted(clip: nn.Module, recipe: RecipeBase, classnames: list[str], tokenizer, preprocess: dict) -> tuple[AdaptedModel, set[str]]:
    """Apply every stage's structure without training; returns the final model and the names of all
    parameters any stage trains (what an artifact stores)."""
    trained: set[str] = set()
    model = None
    for stage in plan_stages(recipe):
        model = prepare_stage(clip, stage, classnames, tokenizer, preprocess)
        trained |= set(model.trainable_parameters())
    return model, trained


def merge_for_prediction(model: AdaptedModel, recipe: RecipeBase) -> AdaptedModel:
    """Fold every stage's trained structure into the base weights (methods with a `merge`); the model
    computes the same outputs, at the base model's speed, and can no longer be trained."""
    for stage in plan_stages(recipe):
        merge = METHODS[stage.recipe.method].merge
        if merge is not None:
            merge(model.clip)
    return model


def count_trainable(clip: nn.Module, recipe: RecipeBase, num_classes: int, tokenizer, preprocess: dict) -> int:
    """Parameters a recipe trains on this architecture (all stages), without training. The model is
    built on a copy, so `clip` is left as it was."""
    model, trained = build_adapted(copy.deepcopy(clip), recipe, [f"class {i}" for i in range(num_classes)], tokenizer, preprocess)
    params = dict(model.named_parameters())
    return sum(params[name].numel() for name in trained)
