"""The networks: the frozen teacher VAE, the tiny student, the discriminator, and their registries."""
