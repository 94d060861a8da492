"""Recipes shipped with tinyae (installed as the package data `tinyae.recipes`)."""
