"""Recipes: YAML files describing a DAG of build steps (see :mod:`buildgraph.recipe.load`)."""
