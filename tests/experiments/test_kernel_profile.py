"""experiments.bench.kernel_profile: kernel names to families, the family table's arithmetic, a CPU profile."""

from __future__ import annotations

import pytest
import torch

from experiments.bench.kernel_profile import KernelTime, family_table, format_families, kernel_family, profile_families


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 64, 4>, true>", "attention"),
        ("pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<...>", "attention"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x64", "attention"),
        ("fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<...>)", "attention"),
        ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64", "convolution"),
        ("sm90_xmma_dgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize256x128x64", "convolution"),
        (
            "void cutlass__5x_cudnn::Kernel<cutlass_tensorop_bf16_s16816fprop_optimized_bf16_128x128_32x5_nhwc>",
            "convolution",
        ),
        ("nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NTN", "matmul"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1", "matmul"),
        ("triton_red_fused_native_group_norm_0", "normalisation"),
        ("triton_per_fused_native_layer_norm_7", "normalisation"),
        ("triton_poi_fused_convolution_0", "inductor fused"),  # the bias add beside an extern conv
        ("triton_poi_fused__to_copy_add_mul_12", "inductor fused"),
        (
            "void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16, __nv_bfloat16, float, false>",
            "layout copy",
        ),
        ("Memcpy HtoD (Pageable -> Device)", "layout copy"),
        ("void at::native::(anonymous namespace)::CatArrayBatchedCopy<...>", "layout copy"),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, ...>", "elementwise"),
        ("aten::mkldnn_convolution", "convolution"),
        ("aten::addmm", "matmul"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
        ("aten::native_group_norm", "normalisation"),
        ("aten::mul", "elementwise"),
        ("Optimizer.step#AdamW.step", "other"),
    ],
)
def test_kernel_family(name: str, family: str) -> None:
    assert kernel_family(name) == family


def test_family_table_sums_shares_and_ranks() -> None:
    kernels = [
        KernelTime("sm90_xmma_fprop_implicit_gemm_a", 3000.0, 10),
        KernelTime("sm90_xmma_fprop_implicit_gemm_b", 1000.0, 5),
        KernelTime("flash_fwd_kernel", 5000.0, 20),
        KernelTime("triton_poi_fused_add_0", 1000.0, 100),
        KernelTime("never_ran", 0.0, 3),
    ]
    table = family_table(kernels, top=2)
    assert table["total_ms"] == 10.0
    assert list(table["families"]) == ["attention", "convolution", "inductor fused"]  # largest first
    assert table["families"]["convolution"] == {"ms": 4.0, "calls": 15, "share": 0.4}
    assert sum(entry["share"] for entry in table["families"].values()) == pytest.approx(1.0)
    assert [row["name"] for row in table["top"]] == ["flash_fwd_kernel", "sm90_xmma_fprop_implicit_gemm_a"]
    assert format_families(table) == "10 ms device time: attention 50%, convolution 40%, inductor fused 10%"
    assert family_table([])["total_ms"] == 0.0


def test_cpu_profile_finds_the_convolution_and_the_matmul() -> None:
    torch.manual_seed(0)
    conv, linear = torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Linear(1024, 64)
    images = torch.randn(4, 8, 32, 32)

    def run() -> None:
        with torch.no_grad():
            for _ in range(3):
                linear(conv(images).flatten(2))

    table = profile_families(run, cuda=False)
    assert {"convolution", "matmul"} <= set(table["families"])
    assert table["families"]["convolution"]["calls"] >= 3 and table["total_ms"] > 0
