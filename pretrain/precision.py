"""`deepspeed.precision: auto`: the training precision this device runs fastest, chosen at each rank's start.

    precision, why = resolve_precision("auto", torch.device("cpu"))   # -> ("fp32", "this CPU has no ...")

bf16 pays only where the hardware computes it: on the Xeon these recipes were tuned on (AVX512-BF16), the
Flickr8k ResNet ran at ~255 samples/s in bf16 against ~100 in fp32; on an AMD EPYC with AVX2 only
(a laptop's kind too) bf16 is emulated and the same step ran at ~13-27 samples/s against ~140 in fp32
(2 ranks, 2026-12-02). So a recipe that names bf16 for a CPU is 5-10x slower on half the machines it meets;
`auto` takes bf16 on a CPU with AVX512-BF16 or AMX, fp32 on any other CPU, bf16 on a CUDA device that
supports it (Ampere and newer), fp16 with loss scaling on an older one (V100).

RUN/config.yaml keeps `auto` (what was asked: a resume on the same kind of machine compares equal); the
precision it resolved to is logged and recorded in the run_info section beside it.
"""
from typing import Tuple

import torch


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX tiles (torch.cpu's probes; absent in a torch without them: no native bf16)."""
    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(probe is not None and probe() for probe in probes)


def resolve_precision(requested: str, device: torch.device) -> Tuple[str, str]:
    """(fp32 | bf16 | fp16, why): `requested` itself unless it is auto."""
    if requested != "auto":
        return requested, "as configured"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", f"auto: {torch.cuda.get_device_name(device)} computes bf16"
        return "fp16", f"auto: {torch.cuda.get_device_name(device)} has no bf16 (fp16 with loss scaling)"
    if cpu_has_native_bf16():
        return "bf16", "auto: this CPU has native bf16 (AVX512-BF16 or AMX)"
    return "fp32", "auto: this CPU has no native bf16 (AVX512-BF16 / AMX), where bf16 is emulated ~5-10x slower"
