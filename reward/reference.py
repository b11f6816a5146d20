"""What a prompt usually looks like: a regression of an image's scene statistics on its prompt's words.

Prompt adherence cannot be judged from pixels alone; it needs to know what the prompt asks for. The reference
model r(prompt) predicts the standardised scene statistics s of the encoder (mean colour above and below the
middle of the background, its luma gradient) from the mean of the prompt's word embeddings, fitted by least
squares on the training images before the heads train. It needs no labels: every generated image is an example
of its prompt. The reward model's agreement features are then ((s − r) / w)² per statistic and
exp(−½ mean((s − r) / w)²), with a learned tolerance w.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reward.vocabulary import PAD


class PromptReference(nn.Module):
    """r(prompt): prompt words [N, L] -> predicted standardised scene statistics [N, S].

    Args:
        vocabulary_size: rows of the word table (``Vocabulary.size``).
        scene_dim: S.
        width: word-embedding and hidden width.
    """

    def __init__(self, vocabulary_size: int, scene_dim: int, width: int = 32) -> None:
        super().__init__()
        if scene_dim < 1:
            raise ValueError(f"scene_dim must be >= 1, got {scene_dim}")
        self.words = nn.EmbeddingBag(vocabulary_size, width, mode="mean", padding_idx=PAD)
        self.mlp = nn.Sequential(nn.Linear(width, 64), nn.GELU(), nn.Linear(64, scene_dim))
        self.register_buffer("mean", torch.zeros(scene_dim))
        self.register_buffer("std", torch.ones(scene_dim))

    def standardise(self, scene: Tensor) -> Tensor:
        """Raw scene statistics [N, S] -> standardised with the training images' mean and std."""
        return (scene - self.mean) / self.std

    def forward(self, words: Tensor) -> Tensor:
        """Predicted standardised scene statistics of each prompt: [N, S]."""
        return self.mlp(self.words(words))

    def fit(self, words: Tensor, scene: Tensor, *, epochs: int = 300, batch_size: int = 256, seed: int = 0) -> float:
        """Least-squares fit on training images (words [N, L] of their prompts, raw scene statistics [N, S]);
        sets the standardisation from ``scene``, then freezes the module.

        Returns:
            The final training mean squared error (standardised units; 1 = no better than the mean).
        """
        if words.shape[0] != scene.shape[0] or words.shape[0] == 0:
            raise ValueError(f"need as many word rows as scene rows (> 0), got {words.shape[0]} and {scene.shape[0]}")
        with torch.no_grad():
            self.mean.copy_(scene.mean(dim=0))
            self.std.copy_(scene.std(dim=0).clamp(min=1e-6) if scene.shape[0] > 1 else torch.ones_like(self.std))
        target = self.standardise(scene)
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.AdamW(self.parameters(), lr=3e-3, weight_decay=1e-4)
        self.train()
        for _ in range(epochs):
            order = torch.randperm(words.shape[0], generator=generator)
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                loss = F.mse_loss(self(words[rows]), target[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        self.eval()
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        with torch.no_grad():
            return float(F.mse_loss(self(words), target))
