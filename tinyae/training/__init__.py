"""Training under accelerate: the losses, the one distillation step, checkpoints and the loop."""
