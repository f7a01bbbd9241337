"""The options dataclasses are the one source of their flags' defaults (clipforge/dataclass_cli.py):
`clipforge convert` with no options gives ConvertOptions(), `clipforge eval` the run config's eval.* defaults."""
import dataclasses

from clipforge.data_pipeline.convert.cli import parser
from clipforge.data_pipeline.convert.options import ConvertOptions
from clipforge.eval.cli import parse_args
from clipforge.modeling.config import RunConfig
from clipforge.modeling.eval_options import EvalOptions


def test_convert_flags_default_to_the_dataclass_outside_slurm(monkeypatch):
    for name in ("SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_ID", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    args = parser().parse_args(["in.csv", "--out", "shards/"])
    flags = {f.name for f in dataclasses.fields(ConvertOptions) if "help" in f.metadata}
    expected = dataclasses.asdict(ConvertOptions(inputs=["in.csv"]))
    assert {name: getattr(args, name) for name in flags} == {name: expected[name] for name in flags}
    assert flags == set(expected) - {"user_agent"}
    assert parser().parse_args(["--out", "o", "--keep-cols", "a, b"]).keep_cols == ["a", "b"]


def test_eval_flags_and_the_periodic_eval_share_names_and_defaults():
    args = parse_args(["--model", "m", "--data", "d", "--task", "retrieval"])
    periodic = RunConfig().eval
    for f in dataclasses.fields(EvalOptions):
        assert getattr(args, f.name) == getattr(periodic, f.name), f.name
    assert parse_args(["--model", "m", "--data", "d", "--task", "retrieval", "--recall-k", "5,1", "10"]).recall_k == \
        [1, 5, 10]
