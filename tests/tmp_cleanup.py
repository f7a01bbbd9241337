"""Remove a module-scoped fixture's temporary folders when the fixture is torn down.

Why: CI's disk is small and not fixed (once 287 MB free). Left in place, a full run's folders add up to
~10 GB -- mostly DeepSpeed checkpoints (a tiny model's is ~100 MB: fp32 weights, Adam moments, the elastic
consolidated state), and CI once failed on a full disk ("checkpoint could not be written ... 0.10 GB free").
Function-scoped `tmp_path` folders go with setup.cfg's `tmp_path_retention_policy = failed`; this does the
same for the folders a module-scoped fixture makes with `tmp_path_factory.mktemp`, which pytest keeps to
the end of the session. Like pytest's policy, nothing is removed when a test failed in the meantime (the
folders are what one looks at then). Session-scoped fixtures keep theirs: later modules use them.

How a folder is tied to its fixture: while a fixture is being set up, it is on `_setting_up` (fixtures set
up others they request, so a stack); `mktemp` is wrapped to charge each new folder to the innermost one.
"""
import shutil
from typing import Dict, List

import pytest

_setting_up: List[object] = []
_folders: Dict[int, list] = {}   # id(fixturedef) -> [folders], for module-scoped fixtures
_failed_at_setup: Dict[int, int] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    _setting_up.append(fixturedef)
    if fixturedef.scope == "module":
        _failed_at_setup[id(fixturedef)] = request.session.testsfailed
    try:
        yield
    finally:
        _setting_up.pop()


def pytest_fixture_post_finalizer(fixturedef, request):
    folders = _folders.pop(id(fixturedef), [])
    if request.session.testsfailed == _failed_at_setup.pop(id(fixturedef), None):
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _charge_folders_to_fixtures(tmp_path_factory):
    mktemp = tmp_path_factory.mktemp

    def charged(basename, numbered=True):
        path = mktemp(basename, numbered=numbered)
        if _setting_up and _setting_up[-1].scope == "module":
            _folders.setdefault(id(_setting_up[-1]), []).append(path)
        return path

    tmp_path_factory.mktemp = charged
    yield
    tmp_path_factory.mktemp = mktemp
