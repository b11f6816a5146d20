"""Where an epoch's time goes: device time by kernel family, from ``torch.profiler`` (issue 9's bench).

The families are read off kernel names (cuDNN, cuBLAS, flash attention, inductor's Triton kernels); on a CPU the
same families are read off the aten ops' self time, so the dry run exercises the same code. The table answers the
question a throughput number cannot: is the time in the matrix work (convolutions, GEMMs, attention) or around it
(normalisation, elementwise, layout copies)?
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # Order matters: cuDNN's attention kernels say "fprop", its convolutions "gemm", and inductor names a fused
    # kernel after the ops it fuses ("triton_poi_fused_convolution_0" is the bias add beside an extern conv).
    ("attention", ("flash", "fmha", "sdpa", "attention")),
    ("normalisation", ("norm",)),
    ("inductor fused", ("triton_",)),
    ("layout copy", ("nchwtonhwc", "nhwctonchw", "memcpy", "memset", "copy_", "transpose", "catarray")),
    ("convolution", ("fprop", "dgrad", "wgrad", "implicit_gemm", "conv2d", "convolution", "winograd")),
    ("matmul", ("gemm", "nvjet", "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul")),
    ("elementwise", ("elementwise", "reduce_kernel", "aten::")),
)
"""(family, lower-case name fragments), first match wins; anything else is "other"."""


def kernel_family(name: str) -> str:
    """The family of a kernel (or, on a CPU, an aten op) named ``name``."""
    lowered = name.lower()
    for family, fragments in FAMILIES:
        if any(fragment in lowered for fragment in fragments):
            return family
    return "other"


@dataclass(frozen=True)
class KernelTime:
    """One kernel name's total: what the profiler's ``key_averages`` gives per name."""

    name: str
    microseconds: float
    calls: int


def family_table(kernels: Iterable[KernelTime], *, top: int = 12) -> dict[str, Any]:
    """Milliseconds, share and calls per family (largest first), and the ``top`` kernels by time."""
    kernels = [k for k in kernels if k.microseconds > 0]
    total = sum(k.microseconds for k in kernels)
    families: dict[str, dict[str, float]] = {}
    for kernel in kernels:
        entry = families.setdefault(kernel_family(kernel.name), {"ms": 0.0, "calls": 0})
        entry["ms"] += kernel.microseconds / 1e3
        entry["calls"] += kernel.calls
    for entry in families.values():
        entry["share"] = entry["ms"] * 1e3 / total if total else 0.0
    ranked = sorted(kernels, key=lambda k: k.microseconds, reverse=True)[:top]
    return {
        "total_ms": total / 1e3,
        "families": dict(sorted(families.items(), key=lambda item: item[1]["ms"], reverse=True)),
        "top": [
            {"name": k.name[:160], "family": kernel_family(k.name), "ms": k.microseconds / 1e3, "calls": k.calls}
            for k in ranked
        ],
    }


def profile_families(run: Callable[[], None], *, cuda: bool, top: int = 12) -> dict[str, Any]:
    """Run ``run()`` under ``torch.profiler`` and tabulate device time (CUDA kernels; a CPU's aten ops' self
    time) by family with :func:`family_table`. The profiled call is not a timing: the profiler slows the host."""
    # heavy (torch): imported when the benchmark runs, so importing the module stays light
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        run()
        if cuda:
            torch.cuda.synchronize()
    events = [event for event in prof.key_averages() if not getattr(event, "is_user_annotation", False)]
    if cuda:
        kernels = [
            KernelTime(event.key, float(event.self_device_time_total), int(event.count))
            for event in events
            if event.device_type == DeviceType.CUDA
        ]
        if not any(kernel.microseconds for kernel in kernels):  # no kernel records: the ops' own device time
            kernels = [KernelTime(e.key, float(e.self_device_time_total), int(e.count)) for e in events]
    else:
        kernels = [
            KernelTime(event.key, float(event.self_cpu_time_total), int(event.count))
            for event in events
            if event.device_type == DeviceType.CPU
        ]
    return family_table(kernels, top=top)


def format_families(table: dict[str, Any]) -> str:
    """One line: ``family share%`` for each family, largest first."""
    parts = [f"{family} {100 * entry['share']:.0f}%" for family, entry in table["families"].items()]
    return f"{table['total_ms']:.0f} ms device time: " + ", ".join(parts)
