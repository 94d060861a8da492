"""Weights shipped with tinyae (installed as the package data `tinyae.weights`)."""
