"""Ray's network guard and the cluster command's refusals (no Ray needed)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from vramgate.cli import main
from vramgate.cluster.netns import REEXEC_FLAG, NotIsolated, ensure_isolated, is_loopback, other_interfaces


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("::")
    assert not is_loopback("192.0.2.2")


def test_ray_is_refused_where_another_network_can_be_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REEXEC_FLAG, "1")  # as if already re-executed: no second attempt
    others = other_interfaces()
    if not others:  # inside a loopback-only namespace: allowed
        assert ensure_isolated() is None
        return
    with pytest.raises(NotIsolated) as caught:
        ensure_isolated()
    assert caught.value.interfaces == tuple(others)
    assert "unshare --net" in str(caught.value)


def test_the_cluster_demo_refuses_bad_options_with_exit_2() -> None:
    result = CliRunner().invoke(main, ["cluster", "demo", "--nodes", "1", "--kill-node"])
    assert result.exit_code == 2
    assert "--kill-node needs at least 2 nodes" in result.output
    result = CliRunner().invoke(main, ["cluster", "demo", "--nodes", "0"])
    assert result.exit_code == 2
    assert "--nodes" in result.output
