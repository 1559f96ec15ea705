"""Process-wide settings: threads never spin, --threads is honoured."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = "import ember, os, torch; print(os.environ['OMP_WAIT_POLICY'], torch.get_num_threads())"


def _run(env_extra: dict[str, str], code: str = PROBE) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.strip()


def test_openmp_threads_sleep_instead_of_spinning() -> None:
    assert _run({}).split()[0] == "PASSIVE"


def test_a_users_wait_policy_wins() -> None:
    assert _run({"OMP_WAIT_POLICY": "ACTIVE"}).split()[0] == "ACTIVE"


def test_threads_setting_is_applied() -> None:
    code = (
        "from ember.runtime import set_threads; import torch; set_threads(1); "
        "print(torch.get_num_threads())"
    )
    assert _run({}, code) == "1"
    assert (
        _run({"EMBER_NUM_THREADS": "2"}, code.replace("set_threads(1)", "set_threads(None)")) == "2"
    )


def test_peer_engines_run_without_embers_wait_policy() -> None:
    code = "from ember.envs import peer_environment; print('OMP_WAIT_POLICY' in peer_environment())"
    assert _run({}, code) == "False"
    assert _run({"OMP_WAIT_POLICY": "ACTIVE"}, code) == "True"
