"""Training and evaluation images: files and streams, crops addressed by sample index, the teacher cache."""
