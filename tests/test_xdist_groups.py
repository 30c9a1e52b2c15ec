"""`make test` runs pytest-xdist with `--dist loadgroup`; tests/conftest.py puts every test marked
`multiprocess` into the one group "multiprocess" so such tests run one at a time on one worker."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.mark.multiprocess
def test_multiprocess_tests_are_in_the_multiprocess_xdist_group(request):
    groups = list(request.node.iter_markers("xdist_group"))
    if not request.config.pluginmanager.hasplugin("xdist"):  # -p no:xdist: the mark would be unknown
        assert groups == []
        return
    (group,) = groups
    assert group.args == ("multiprocess",)
    if hasattr(request.config, "workerinput") and request.config.getvalue("loadgroup"):  # a worker of `make test`
        # The group travels to xdist's scheduler as this suffix (see _apply_xdist_groups in conftest.py).
        assert request.node.nodeid.endswith("@multiprocess")


def test_other_tests_are_in_no_xdist_group(request):
    assert list(request.node.iter_markers("xdist_group")) == []


def test_workers_share_the_cores():
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers < 2:
        pytest.skip("not a worker of a pytest-xdist run with several workers")
    # tests/conftest.py: each worker's torch threads, and those of the processes it starts.
    assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"])
