"""The inpainting policy (UNet + VAE + text encoder, LoRA via peft) and how it learns:
DDPO with a KL leash to the base, and offline Diffusion-DPO / reward-weighted regression.

Imports ``offline_data`` and ``rollout``.
"""
