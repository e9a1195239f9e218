"""Recipes: one YAML file per experiment, read into a pydantic v2 model (strict types, no
unknown keys) or refused with one line naming the file, the key and what is allowed.
Nothing here touches tensors.

- :mod:`~plastcli.recipes.fields`: the base models (a section; a whole recipe, whose
  cross-field checks run as a model validator), the value types (numbers, names, choices as
  ``Literal``, bounds), ``--set`` and :class:`~plastcli.recipes.fields.Where`;
- :mod:`~plastcli.recipes.meta`: the meta-training schemas and their cross-field checks;
- :mod:`~plastcli.recipes.online`: the online schemas;
- :mod:`~plastcli.recipes.messages`: validation, and pydantic's errors as plast's one line;
- :mod:`~plastcli.recipes.load`: files in, resolved YAML out;
- :mod:`~plastcli.recipes.keys`: every key for ``plast recipe keys`` and the JSON Schema.

The names below are the package's interface; everything else is imported from its module.
"""

from plastcli.recipes.load import (
                                   SCHEMAS,
                                   load_recipe,
                                   read_recipe_yaml,
                                   recipe_from_yaml,
                                   recipe_needs,
                                   recipe_to_yaml,
)
from plastcli.recipes.meta import AblateLayersRecipe, MetaTrainRecipe, layer_names
from plastcli.recipes.online import BaselineRecipe, InitStudyRecipe, RnnMemoryRecipe

__all__ = ["SCHEMAS", "AblateLayersRecipe", "BaselineRecipe", "InitStudyRecipe",
           "MetaTrainRecipe", "RnnMemoryRecipe", "layer_names", "load_recipe",
           "read_recipe_yaml", "recipe_from_yaml", "recipe_needs", "recipe_to_yaml"]
