"""Sampling from an inpainting diffusion model: DDIM with per-step log-probs, classifier-free guidance,
product preservation, trajectories on disk, best-of-N reranking.

Imports ``offline_data`` only; the denoiser and the reward function arrive typed by ``rollout.protocols``.
"""
