"""Measuring students and teachers: image metrics, real LPIPS, evaluation reports, speed, latent inspection."""
