"""eval.evaluator names the periodic eval ("module:function"), imported at run start so that pretrain imports no
eval itself; a name that does not import is one line naming the key, before any process starts."""
import pytest

from clipforge.eval.periodic import retrieval_evaluator
from clipforge.modeling.config import ConfigError, RunConfig
from clipforge.pretrain.evaluator import resolve_evaluator
from tests.launch.launch_helpers import clipforge, marker_dataset, write_config


def test_the_default_is_evals_retrieval_evaluator():
    assert resolve_evaluator(RunConfig().eval.evaluator) is retrieval_evaluator


@pytest.mark.parametrize("name, needle", [
    ("clipforge.eval.nope:make", "no module 'clipforge.eval.nope' to import"),
    ("nopackage.periodic:make", "no module 'nopackage.periodic' to import"),
    ("clipforge.eval.periodic:nope", "module 'clipforge.eval.periodic' has no function 'nope'"),
    ("clipforge.eval.periodic.retrieval_evaluator", 'expected "module:function"'),
])
def test_a_name_that_does_not_import_is_one_line_naming_the_key(name, needle):
    with pytest.raises(ConfigError) as err:
        resolve_evaluator(name)
    message = str(err.value)
    assert message.startswith(f"eval.evaluator={name!r}: ") and needle in message and "\n" not in message


@pytest.mark.parametrize("command", [("launch", "local"), ("pretrain",)])
def test_launch_and_pretrain_refuse_it_before_any_rank_starts(tmp_path, command):
    config = write_config(tmp_path / "c.yaml", str(tmp_path / "run"), marker_dataset(tmp_path / "shards"))
    result = clipforge(*command, "--config", str(config), "eval.evaluator=clipforge.eval.nope:make")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "eval.evaluator='clipforge.eval.nope:make': no module" in result.stderr
    assert not (tmp_path / "run").exists()   # nothing was started or written
