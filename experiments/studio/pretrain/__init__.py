"""Pretraining the tiny inpainting base on the studio world (``backdrop policy pretrain``).

``config`` (the stages' configs), ``data`` (rendered scene and product pools), ``autoencoder`` (VAE and
mask-aware decoder stages), ``optim`` (schedules, EMA), ``checkpoint``, ``train`` (the loop), ``eval`` (the
manifest's metrics) and ``manifest`` (writing the shipped folder).
"""
