"""Two CPU processes (torchrun, gloo) train one policy: gradients are averaged, adapters stay identical."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import json, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
from accelerate import Accelerator
from tests.policy.test_trainer import red_background, tiny_config, tiny_policy, tiny_requests
from policy.trainer import DDPOTrainer

accelerator = Accelerator(cpu=True)
trainer = DDPOTrainer(tiny_policy(), red_background, tiny_requests(6), tiny_config(epochs=2), seed=0,
                      accelerator=accelerator)
history = trainer.train()
weights = torch.cat([p.detach().flatten() for p in trainer.params])[None]
gathered = accelerator.gather(weights)
result = [accelerator.process_index, accelerator.num_processes, history[-1]["reward/mean"],
          bool((gathered[0] == gathered[1]).all()), float(weights.abs().sum()) > 0]
with open({out!r} + f"/rank{{accelerator.process_index}}.json", "w") as handle:
    json.dump(result, handle)
"""


@pytest.mark.slow
def test_two_processes_keep_one_adapter(tmp_path: Path) -> None:
    root = str(Path(__file__).resolve().parents[2])
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(root=root, out=str(tmp_path)))
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", str(script)], capture_output=True, text=True, timeout=300, cwd=root
    )
    assert result.returncode == 0, result.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r[:2] for r in ranks] == [[0, 2], [1, 2]]
    assert all(same and moved for *_, same, moved in ranks)  # one adapter, and it was trained
    assert ranks[0][2] != ranks[1][2]  # each process sampled its own requests and seeds
