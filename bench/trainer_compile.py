"""bench.trainer's train.compile figures: samples/s of clipforge's real loop (pretrain.run.run, tiny-vit, ZeRO-2 fp32,
2 gloo ranks) with train.compile against the same loop eager, in interleaved rounds, and the compile time (the first
step's extra seconds, `compile_s` in metrics.jsonl). The worker's launch gives inductor an empty cache directory, so
the first round's compile time is a first run's on this machine; later rounds reuse the compiled code in-process.
Only CPU here: bench.trainer trains on CPU ranks, and bench.gpu times a bare step, not the DeepSpeed engine.
"""
import json
from pathlib import Path


def _compile_s(run_dir: str) -> float:
    rows = [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]
    return next(r["compile_s"] for r in rows if "compile_s" in r)


def compile_rates(quick: bool, out: str, clipforge, model: str) -> dict:
    """clipforge: bench.trainer's _clipforge(model, batch, steps, warmup, stage, out, overrides=...) -> samples/s.
    -> {"eager": [samples/s per round], "compiled": [...], "compile_s": the first compiled run's, "batch": B}."""
    batch, steps, warmup, rounds = (32, 12, 3, 1) if quick else (128, 30, 5, 3)
    res = {"eager": [], "compiled": [], "batch": batch}
    for round_ in range(rounds):
        res["eager"].append(clipforge(model, batch, steps, warmup, 2, f"{out}/ce-{round_}"))
        res["compiled"].append(clipforge(model, batch, steps, warmup, 2, f"{out}/cc-{round_}",
                                         overrides=["train.compile=true"]))
        if round_ == 0:  # later rounds reuse the code compiled in this process
            res["compile_s"] = _compile_s(f"{out}/cc-0")
    return res


def compile_row(res: dict, result) -> dict:
    """bench.common.result row: best compiled round vs best eager round."""
    eager, compiled = max(res["eager"]), max(res["compiled"])
    per_sample_saved = 1 / eager - 1 / compiled  # seconds a sample costs less compiled
    break_even = res["compile_s"] / per_sample_saved / res["batch"] if per_sample_saved > 0 else None
    runs = lambda xs: "/".join(f"{x:.1f}" for x in xs)  # noqa: E731
    return result("trainer-compile", "same loop eager (train.compile=false)",
                  f"samples/s, 2 CPU ranks, tiny-vit, ZeRO-2 fp32, batch {res['batch']}, train.compile=true",
                  compiled, eager,
                  notes=f"compile time {res['compile_s']:.0f} s (first step's extra, empty inductor cache); "
                        f"rounds compiled {runs(res['compiled'])}, eager {runs(res['eager'])}; "
                        + (f"pays for itself after {break_even:,.0f} steps" if break_even else "never pays for itself"))
