"""Recipes: the shipped catalogue, the schema, and resolution with overrides."""
