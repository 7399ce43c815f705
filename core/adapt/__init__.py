"""CLIP adaptation engine (torch + open_clip only): models, methods, recipes, data, trainer,
evaluation, artifacts and prediction. Import the submodules you need; this package file stays empty
so that torch-free parts (recipes, method configs) import without torch."""
