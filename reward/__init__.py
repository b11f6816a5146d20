"""Reward models learned from engagement logs: click (position-debiased), dwell (censored) and pairwise
preference (Bradley-Terry) heads on an image encoder, calibrated and ensembled behind ``RewardScorer``.

Imports ``offline_data`` only.
"""
