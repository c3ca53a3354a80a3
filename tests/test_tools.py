"""Each finder of a real program skips without it, and fails under CI instead."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.browser import chromium
from tests.nginx import nginx_binary
from tests.prometheus import alertmanager_binary, binary

FINDERS: list[tuple[str, Callable[[], str], str, str]] = [
    ("prometheus", lambda: binary("prometheus"), "Prometheus", "prometheus"),
    ("alertmanager", lambda: alertmanager_binary("amtool"), "Alertmanager", "amtool"),
    ("nginx", nginx_binary, "nginx", "nginx"),
    ("chromium", chromium, "browser", "chromium"),
]


@pytest.mark.parametrize(
    ("find", "tests", "program"), [f[1:] for f in FINDERS], ids=[f[0] for f in FINDERS]
)
def test_a_missing_program_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, find: Callable[[], str], tests: str, program: str
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("tests.nginx.SBIN", "/nonexistent")  # nginx also looks in /usr/sbin
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"CI must run the {tests} tests"):
        find()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match=f"{program} is not installed"):
        find()
