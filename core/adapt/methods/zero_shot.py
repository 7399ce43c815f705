"""Zero-shot CLIP (section 2, appendix A.2): class embeddings ensembled over prompt templates,
by default the 80 OpenAI ImageNet templates that open_clip ships. Nothing is trained."""

from __future__ import annotations

from typing import ClassVar, Literal

from core.adapt.methods.base import Method, ParamCount, RecipeBase


def openai_templates() -> list[str]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    # open_clip stores them as callables; each is a plain format of the class name.
    return [template("{}") for template in OPENAI_IMAGENET_TEMPLATES]


class ZeroShotConfig(RecipeBase):
    method: Literal["zero_shot"] = "zero_shot"
    supports_layernorm: ClassVar[bool] = False


def build(clip, classnames, tokenizer, recipe: ZeroShotConfig):
    from core.adapt.modules import TemplateHead

    return TemplateHead(tokenizer, classnames, recipe.templates or openai_templates())


METHOD = Method(
    "zero_shot", ZeroShotConfig,
    "nothing: class embeddings ensembled over the 80 OpenAI ImageNet templates",
    build,
    vit_b16=ParamCount(0),
    trains=r"(?!)",  # matches no name
)
