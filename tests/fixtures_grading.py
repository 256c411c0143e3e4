"""The graded calc task the grading attack and env hardening tests share.

`calc_spec`: envtest's calc.py with add() broken by the setup patch MUTATION (it subtracts); hidden tests
tests/test_calc.py::test_add (fail to pass) and ::test_sub (pass to pass). `env_client` (module): a client of
the session's env server. `calc_env`: a fresh env of that task, deleted afterwards.
"""

from __future__ import annotations

import pytest

from envserver.errors import EnvServerError
from envserver.models import GradingSpec
from tests.test_envserver_grading import ADD, MUTATION, SUB

CALC_SPEC = GradingSpec(test_command="python -m pytest -q tests", test_files=["tests/test_calc.py"],
                        fail_to_pass=[ADD], pass_to_pass=[SUB], timeout=120)


@pytest.fixture(scope="module")
def env_client(envserver):
    with envserver.client() as c:
        yield c


@pytest.fixture
def calc_env(env_client, envtest_image):
    info = env_client.create_env(envtest_image, ttl=600, setup_patch=MUTATION, grading=CALC_SPEC)
    yield info
    try:
        env_client.delete_env(info.id)
    except EnvServerError:
        pass  # a test that broke or deleted it
