"""Reward training in several processes equals one process with the same global batch.

Fast: the ownership of distinct images between processes (by hand), and :class:`GlobalBatchNorm1d` in a one-process
gloo group against ``BatchNorm1d`` (outputs, gradients and running statistics; a duplicated row counted once).
Slow: two CPU processes (torchrun, gloo) fit the reward model of one process: every member's weights, the
per-epoch metrics and the calibrated scorer's output agree to float rounding.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from reward.batch_statistics import GlobalBatchNorm1d, owned_images


@pytest.mark.parametrize(
    ("shares", "rank", "owned", "total"),
    [
        ([[0, 2, 5], [1, 2, 6]], 0, [True, True, True], 5),
        ([[0, 2, 5], [1, 2, 6]], 1, [True, False, True], 5),  # image 2 is summed by process 0
        ([[3], [3], [3, 4]], 2, [False, True], 2),
        ([[], [1, 2]], 1, [True, True], 2),  # a process without rows of a table owns nothing there
    ],
)
def test_each_distinct_image_is_owned_by_the_lowest_process_holding_it(
    shares: list[list[int]], rank: int, owned: list[bool], total: int
) -> None:
    mask, count = owned_images([torch.tensor(s, dtype=torch.long) for s in shares], rank)
    assert mask.tolist() == owned and count == total


def test_ownership_rejects_an_unknown_rank() -> None:
    with pytest.raises(ValueError, match="rank 2 is not one of the 2 processes"):
        owned_images([torch.tensor([0]), torch.tensor([1])], 2)


@pytest.fixture
def one_process_group(tmp_path: Path):
    """A gloo process group of one process (what all_reduce needs), torn down afterwards."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_global_batch_norm_is_batch_norm_over_the_distinct_rows(one_process_group: None) -> None:
    generator = torch.Generator().manual_seed(0)
    distinct = (torch.randn(6, 5, generator=generator) * 3 + 40).requires_grad_()
    reference, global_norm = nn.BatchNorm1d(5, affine=False), GlobalBatchNorm1d(nn.BatchNorm1d(5, affine=False))
    expected = reference(distinct)
    (expected * torch.arange(5.0)).sum().backward()
    expected_grad, distinct.grad = distinct.grad.clone(), None

    # Row 6 repeats row 2 (an image held twice): it is standardised but not counted in the statistics.
    rows = torch.cat([distinct, distinct[2:3]])
    global_norm.set_ownership(torch.tensor([True] * 6 + [False]), total=6)
    out = global_norm(rows)
    (out[:6] * torch.arange(5.0)).sum().backward()
    torch.testing.assert_close(out[:6], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[6], expected[2])
    torch.testing.assert_close(distinct.grad, expected_grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(global_norm.running_mean, reference.running_mean)
    torch.testing.assert_close(global_norm.running_var, reference.running_var)
    assert int(global_norm.num_batches_tracked) == 1

    # Without a new ownership mask (or in eval mode) it is a plain BatchNorm1d; the plain copy keeps the statistics.
    torch.testing.assert_close(global_norm.eval()(distinct), reference.eval()(distinct))
    plain = global_norm.to_batch_norm()
    assert type(plain) is nn.BatchNorm1d and torch.equal(plain.running_var, global_norm.running_var)


def test_global_batch_norm_refuses_bad_ownership() -> None:
    norm = GlobalBatchNorm1d(nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match="at least 2 distinct rows"):
        norm.set_ownership(torch.tensor([True]), total=1)
    norm.set_ownership(torch.tensor([True, True]), total=2)
    with pytest.raises(ValueError, match=r"ownership mask is \[2\] for an input of 3 rows"):
        norm(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="needs a BatchNorm1d with a momentum"):
        GlobalBatchNorm1d(nn.BatchNorm1d(3, momentum=None))


SCRIPT = """
import json, os, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
from safetensors.torch import save_file
from experiments.runtime import seed_everything
from reward.pipeline import fit_reward_model
from tests.reward.conftest import fast_config

splits, out = {splits!r}, {out!r}
processes = int(os.environ.get("WORLD_SIZE", "1"))
rank = int(os.environ.get("RANK", "0"))
seed_everything(0)  # as the CLI's setup_runtime does: the prompt reference is initialised from the global stream
# dropout off: its masks come from each process's own random stream (reward/train.py); bootstrap weights on
config = fast_config(train={{"epochs": 3}}, model={{"dropout": 0.0}}, ensemble={{"members": 2}})
scorer, metrics = fit_reward_model(config, splits + "/train", splits + "/validation", seed=0,
                                   device=torch.device("cpu"), progress=False)
tensors = {{f"{{k}}.{{name}}": value.detach().clone().contiguous().float()
           for k, member in enumerate(scorer.ensemble.members) for name, value in member.state_dict().items()}}
save_file(tensors, f"{{out}}/members_{{processes}}_{{rank}}.safetensors")
with open(f"{{out}}/metrics_{{processes}}_{{rank}}.json", "w") as handle:
    json.dump({{"history": metrics["history"], "examination": metrics["examination"],
               "best": [m["best_epoch"] for m in metrics["members"]]}}, handle)
"""


@pytest.mark.slow
def test_two_processes_fit_the_reward_model_of_one_process(small_splits: Path, tmp_path: Path) -> None:
    root = str(Path(__file__).resolve().parents[2])
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT.format(root=root, splits=str(small_splits), out=str(tmp_path)))
    torchrun = Path(sys.executable).parent / "torchrun"
    for command in ([sys.executable, str(script)], [str(torchrun), "--nproc_per_node", "2", str(script)]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=root)
        assert result.returncode == 0, result.stderr[-3000:]

    one = load_file(tmp_path / "members_1_0.safetensors")
    for rank in (0, 1):
        two = load_file(tmp_path / f"members_2_{rank}.safetensors")
        assert two.keys() == one.keys()
        for name, value in one.items():
            # float rounding only (shares of sums added in another order), carried through 3 epochs of AdamW
            torch.testing.assert_close(two[name], value, rtol=1e-4, atol=1e-5, msg=name)
        metrics = [json.loads((tmp_path / f"metrics_{key}.json").read_text()) for key in ("1_0", f"2_{rank}")]
        assert metrics[0]["best"] == metrics[1]["best"]
        assert metrics[1]["examination"] == pytest.approx(metrics[0]["examination"], rel=1e-4)
        for expected, got in zip(metrics[0]["history"], metrics[1]["history"], strict=True):
            for record, reference in zip(got, expected, strict=True):
                assert record.keys() == reference.keys()
                for key, value in reference.items():
                    assert record[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
