"""The options dataclasses are the one source of their flags' defaults (clipforge/dataclass_cli.py):
`clipforge convert` with no options gives ConvertOptions(), `clipforge eval` the run config's eval.* defaults
and TaskSpec's, `clipforge launch` LocalLaunchOptions(), SlurmOptions() and TrainJob's defaults."""
import dataclasses

from clipforge.data_pipeline.convert.cli import parser
from clipforge.data_pipeline.convert.options import ConvertOptions
from clipforge.dataclass_cli import field_values, flag_fields
from clipforge.eval.cli import parse_args, task_spec
from clipforge.eval.task_options import ProbeConfig
from clipforge.eval.tasks import TaskSpec
from clipforge.launch.arguments import slurm_options
from clipforge.launch.commands import _parser as launch_parser
from clipforge.launch.slurm import SlurmOptions, TrainJob
from clipforge.launch.slurm_jobs import _parser as slurm_job_parser
from clipforge.launch.torchrun import LocalLaunchOptions
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


def test_launch_flags_default_to_their_dataclasses():
    """launch local's flags are LocalLaunchOptions', every launch slurm parser's are SlurmOptions' (no
    --gpus-per-node: 0, a CPU job) and launch slurm's own are TrainJob's: no default is written twice."""
    local = launch_parser("local").parse_args(["--config", "c.yaml"])
    assert LocalLaunchOptions(**field_values(local, LocalLaunchOptions)) == LocalLaunchOptions()
    train = launch_parser("slurm").parse_args(["--config", "c.yaml"])
    assert slurm_options(train) == SlurmOptions(python=train.python)
    job = TrainJob(opts=SlurmOptions(), run_dir="r", workdir="w", config="c", overrides=[])
    assert field_values(train, TrainJob) == {f.name: getattr(job, f.name) for f in flag_fields(TrainJob)}
    for kind, argv in (("convert", ["--parts", "2", "--out", "o"]), ("eval", ["--job-dir", "j"])):
        args = slurm_job_parser(kind).parse_args(argv)
        assert slurm_options(args) == SlurmOptions(python=args.python), kind
    given = launch_parser("slurm").parse_args(["--config", "c.yaml", "--nodes", "2", "--gpus-per-node", "8",
                                                "--env", "A=1", "--env", "B=2", "--exclusive", "--time", "1:00:00"])
    assert slurm_options(given) == SlurmOptions(nodes=2, gpus_per_node=8, env=["A=1", "B=2"], exclusive=True,
                                                time="1:00:00", python=given.python)
    assert {f.name for f in flag_fields(SlurmOptions)} == {f.name for f in dataclasses.fields(SlurmOptions)} - {"python"}


def test_eval_task_flags_default_to_the_task_dataclasses():
    """--split, --label-key, --train-split, --val-proportion, the probe's --fewshot-* ...: TaskSpec's fields (a suite
    entry's keys), in both spellings."""
    args = parse_args(["--model", "m", "--data", "d", "--task", "linear_probe"])
    assert task_spec(args) == TaskSpec(task="linear_probe", data="d", recall_k=args.recall_k,
                                       probe=ProbeConfig(batch_size=args.batch_size))
    given = task_spec(parse_args(["--model", "m", "--data", "d", "--task", "linear_probe", "--split", "val",
                                  "--label-key", "shape", "--train_split", "tr", "--val-proportion", "0.5",
                                  "--fewshot_lr", "0.3", "--fewshot-epochs", "2", "--seed", "4"]))
    assert (given.split, given.label_key, given.train_split, given.val_proportion) == ("val", "shape", "tr", 0.5)
    assert given.probe == ProbeConfig(lr=0.3, epochs=2, seed=4, batch_size=given.probe.batch_size)
