"""pretrain/deepspeed_fixes.py patches DeepSpeed 0.19.7 internals: on another DeepSpeed version each fix refuses
to run with one line (a UserError: `clipforge pretrain` exits 2). And build_engine applies its steps in the
order its module docstring lists."""
import ast
import re
from pathlib import Path

import pytest

from clipforge.pretrain import deepspeed_fixes, engine
from clipforge.pretrain.deepspeed_fixes import UntestedDeepSpeed


def test_the_installed_deepspeed_is_the_tested_one():
    deepspeed_fixes.require_tested("any")


def test_each_fix_refuses_an_untested_deepspeed_in_one_line(monkeypatch):
    import deepspeed

    monkeypatch.setattr(deepspeed, "__version__", "0.20.0")
    with pytest.raises(UntestedDeepSpeed) as err:
        with deepspeed_fixes.zero3_fp32_master_is_the_partition():
            pass
    message = str(err.value)
    assert "\n" not in message and "0.20.0" in message and "0.19.7" in message
    assert "zero3_fp32_master_is_the_partition" in message
    with pytest.raises(UntestedDeepSpeed, match="check_zero3_gradients_in_every_precision"):
        deepspeed_fixes.check_zero3_gradients_in_every_precision(object())
    with pytest.raises(UntestedDeepSpeed, match="check_zero12_gradients_in_every_precision"):
        deepspeed_fixes.check_zero12_gradients_in_every_precision(object())


def test_build_engine_applies_the_steps_its_docstring_lists_in_that_order():
    listed = re.findall(r"^\s+\d\. (\w+)", engine.__doc__, flags=re.M)
    assert len(listed) == 6
    tree = ast.parse(Path(engine.__file__).read_text())
    build = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "build_engine")
    called = [n.func.id for n in ast.walk(build) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    assert [name for name in called if name in listed] == listed
