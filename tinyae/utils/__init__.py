"""Small helpers every concern shares; nothing here imports the rest of tinyae."""
