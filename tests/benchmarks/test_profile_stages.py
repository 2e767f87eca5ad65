"""benchmarks/profile_stages.py: kernel names sorted into the right categories (hand-written CUPTI / aten names),
the busy-time and per-unit arithmetic on a hand-worked timeline, and a tiny CPU run of three stages end to end (its
JSON lines, its category shares, its markdown tables and their re-rendering from the JSON lines)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the benchmarks folder is not an installed package

from benchmarks.profile_stages import (  # noqa: E402
    CATEGORIES,
    Activity,
    device_activities,
    interval_union_us,
    kernel_category,
    main,
    summarize,
)

NAMES = [
    ("ampere_fp16_s16816gemm_fp16_128x128_ldg8_f2f_stages_32x5_tn", "GEMM/matmul"),
    ("sm90_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel"
     "__5x_cublas", "GEMM/matmul"),
    ("nvjet_hsh_256x128_64x4_2x1_v_bz_coopA_NTN", "GEMM/matmul"),
    ("void cutlass::Kernel2<cutlass_80_tensorop_f16_s16816gemm_relu_f16_64x64_32x6_tn_align8>"
     "(cutlass_80_tensorop_f16_s16816gemm_relu_f16_64x64_32x6_tn_align8::Params)", "GEMM/matmul"),
    ("aten::addmm", "GEMM/matmul"),
    ("aten::bmm", "GEMM/matmul"),
    ("flash_fwd_kernel", "attention"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<208, 128, 32, 4, false, false, cutlass::half_t, "
     "Flash_kernel_traits<208, 128, 32, 4, cutlass::half_t> >, false, false, false, false, true, true, false, false>"
     "(pytorch_flash::Flash_fwd_params)", "attention"),
    ("fmha_cutlassF_f16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<cutlass::half_t, "
     "cutlass::arch::Sm80, true, 64, 64, 64, true, true>::Params)", "attention"),
    ("cudnn_generated_fort_native_sdpa_sm90_knob_7_64x128x128_4x1x1_kernel0_0", "attention"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_warpgroupsize1x1x1",
     "convolution"),  # cuDNN's implicit-GEMM convolution, not a GEMM
    ("void cumm::conv::main::ConvKernel_f16f16f16_0::conv_kernel(ConvParams)", "convolution"),
    ("aten::mkldnn_convolution", "convolution"),
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::Half, float, false>(int, float, "
     "c10::Half const*, c10::Half const*, c10::Half const*, float*, float*, c10::Half*)", "normalisation"),
    ("void at::native::batch_norm_collect_statistics_kernel<float>()", "normalisation"),
    ("aten::native_layer_norm", "normalisation"),
    ("triton_red_fused_native_group_norm_5", "normalisation"),
    ("triton_per_fused_add_native_layer_norm_12", "normalisation"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::Half>, "
     "std::array<char*, 3ul> >(int, at::native::CUDAFunctor_add<c10::Half>, std::array<char*, 3ul>)",
     "elementwise/activation"),
    ("void at::native::(anonymous namespace)::CatArrayBatchedCopy<float>()", "elementwise/activation"),
    ("triton_poi_fused_add_convolution_silu_3", "elementwise/activation"),  # a convolution's epilogue, not one
    ("aten::gelu", "elementwise/activation"),
    ("aten::copy_", "elementwise/activation"),
    ("aten::add_", "elementwise/activation"),
    ("triton_red_fused_sum_2", "reduction/scatter/index"),
    ("triton_per_fused__softmax_7", "reduction/scatter/index"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::NormTwoOps<float, float, float>, "
     "unsigned int, float, 4> >()", "reduction/scatter/index"),
    ("void at::native::indexFuncLargeIndex<float, long, unsigned int, 2, 2, -2, true, at::native::ReduceAdd>()",
     "reduction/scatter/index"),
    ("void (anonymous namespace)::softmax_warp_forward<float, float, float, 7, false, false>()",
     "reduction/scatter/index"),
    ("void cumm::gemm::gather::GatherAll::kernel()", "reduction/scatter/index"),  # spconv's gather, not a GEMM
    ("aten::index_add_", "reduction/scatter/index"),
    ("aten::sum", "reduction/scatter/index"),
    ("Memcpy DtoH (Device -> Pinned)", "memcpy"),
    ("Memcpy HtoD (Pageable -> Device)", "memcpy"),
    ("Memset (Device)", "other"),
    ("aten::empty", "other"),
]


@pytest.mark.parametrize("name, expected", NAMES)
def test_kernel_category(name, expected):
    assert kernel_category(name) == expected


def test_interval_union_counts_overlaps_once():
    spans = [Activity("a", 20, 5), Activity("b", 0, 10), Activity("c", 5, 10), Activity("d", 2, 1)]
    assert interval_union_us(spans) == 20  # [0, 15) and [20, 25)
    assert interval_union_us([]) == 0


def test_summarize_hand_worked():
    # 2 calls of 2 units: GEMM 6 + 2 µs, attention 4 µs (overlapping the first GEMM), memcpy 2 (H2D) + 1 (D2H).
    spans = [Activity("ampere_fp16_s16816gemm_x", 0, 6), Activity("ampere_fp16_s16816gemm_x", 10, 2),
             Activity("flash_fwd_kernel", 4, 4), Activity("Memcpy HtoD (Pageable -> Device)", 20, 2),
             Activity("Memcpy DtoH (Device -> Pageable)", 30, 1)]
    busy = interval_union_us(spans)
    assert busy == 8 + 2 + 2 + 1
    out = summarize(spans, busy, calls=2, units_per_call=2, wall_s_per_call=20e-6, top=2)
    units = 4
    assert out["device_ms_per_unit"] == pytest.approx(15 / 1000 / units)
    assert out["categories"]["GEMM/matmul"]["ms_per_unit"] == pytest.approx(8 / 1000 / units)
    assert out["categories"]["GEMM/matmul"]["share"] == pytest.approx(8 / 15)
    assert out["categories"]["attention"]["share"] == pytest.approx(4 / 15)
    assert out["categories"]["memcpy"]["share"] == pytest.approx(3 / 15)
    assert sum(c["share"] for c in out["categories"].values()) == pytest.approx(1)
    assert list(out["categories"]) == list(CATEGORIES)
    assert out["memcpy_ms_per_unit"] == pytest.approx({"HtoD": 2 / 1000 / units, "DtoH": 1 / 1000 / units})
    # wall 20 µs per call of 2 units = 10 µs per unit; busy 13 µs over 4 units = 3.25 µs per unit
    assert out["wall_ms_per_unit"] == pytest.approx(0.010)
    assert out["idle_share"] == pytest.approx(1 - 3.25 / 10)
    assert [t["name"] for t in out["top"]] == ["ampere_fp16_s16816gemm_x", "flash_fwd_kernel"]
    assert out["top"][0]["calls_per_unit"] == pytest.approx(2 / units)
    assert out["top"][0]["category"] == "GEMM/matmul"


def test_tiny_cpu_run_writes_records_and_tables(tmp_path):
    out, table, again = tmp_path / "profile.jsonl", tmp_path / "profile.md", tmp_path / "again.md"
    stages = ["sam", "fusion", "extract"]
    run = subprocess.run([sys.executable, "-m", "benchmarks.profile_stages", "--device", "cpu", "--tiny",
                          "--stages", ",".join(stages), "--out", str(out), "--markdown", str(table)],
                         cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["stage"] for r in records] == stages
    for rec in records:
        assert "error" not in rec, rec["error"]
        categories = rec["categories"]
        assert set(categories) == set(CATEGORIES)
        assert sum(c["share"] for c in categories.values()) == pytest.approx(1, abs=1e-6)
        # on the CPU busy time is the ops' summed self time, i.e. exactly what the categories split
        assert sum(c["ms_per_unit"] for c in categories.values()) == pytest.approx(rec["busy_ms_per_unit"], rel=1e-6)
        assert rec["wall_ms_per_unit"] > 0 and 0 <= rec["idle_share"] <= 1
        assert 0 < len(rec["top"]) <= 8
        assert rec["top"] == sorted(rec["top"], key=lambda t: -t["ms_per_unit"])
    text = table.read_text()
    for stage in stages:
        assert f"## {stage}\n" in text
    lines = text.splitlines()
    for row in [f"| {c} |" for c in CATEGORIES] + ["| idle (wall - busy) |"]:  # one category table per stage
        assert sum(line.startswith(row) for line in lines) == len(stages), row
    main(["--render", str(out), "--markdown", str(again)])  # the tables again, from the JSON lines alone
    assert again.read_text() == text


def _event(name, start, end, device_type, activity_type=None, annotation=False, is_async=False, new_torch=True):
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    class Interval(SimpleNamespace):
        def elapsed_us(self):
            return self.end - self.start

    event = SimpleNamespace(name=name, time_range=Interval(start=start, end=end), self_cpu_time_total=end - start,
                            device_type=getattr(DeviceType, device_type), is_user_annotation=annotation,
                            is_async=is_async)
    if new_torch:  # torch >= 2.13 names the kind of every event; 2.11 (the GPU image) has no such attribute
        event.activity_type = activity_type
    return event


@pytest.mark.parametrize("new_torch", [True, False])
def test_device_activities_keep_device_work_only(new_torch):
    import torch

    events = [_event("aten::mm", 0, 10, "CPU", "cpu_op", new_torch=new_torch),
              _event("sm90_xmma_gemm", 2, 8, "CUDA", "kernel", new_torch=new_torch),
              _event("Memcpy DtoH (Device -> Pinned)", 8, 9, "CUDA", "gpu_memcpy", new_torch=new_torch),
              _event("ProfilerStep#1", 0, 12, "CUDA", "gpu_user_annotation", annotation=True, new_torch=new_torch),
              _event("record_param_comms", 0, 3, "CPU", "cpu_op", is_async=True, new_torch=new_torch)]
    gpu = device_activities(events, torch.device("cuda"))
    assert [(a.name, a.duration_us) for a in gpu] == [("sm90_xmma_gemm", 6), ("Memcpy DtoH (Device -> Pinned)", 1)]
    cpu = device_activities(events, torch.device("cpu"))
    assert [(a.name, a.duration_us) for a in cpu] == [("aten::mm", 10)]
