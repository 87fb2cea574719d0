"""Cluster secrets: several at once, so they rotate without downtime."""

from __future__ import annotations

from typing import Any

import pytest

from cim.config import RouteConfig, ServerConfig, parse_cluster_secrets
from cim.errors import PermissionDenied
from cim.grpcutil import CLUSTER_SECRET, SecretCheck

TOKEN_KEYS: dict[str, Any] = {"token_keys": {"k": b"k" * 16}, "token_key_id": "k"}


def test_a_comma_separated_list_is_parsed_in_order_without_blanks_or_repeats() -> None:
    assert parse_cluster_secrets("new") == ("new",)
    assert parse_cluster_secrets(" new , old,,new ") == ("new", "old")


@pytest.mark.parametrize("spec", ["", " ", ",", " , "])
def test_no_secret_is_an_error(spec: str) -> None:
    with pytest.raises(ValueError, match="cluster secret is required"):
        parse_cluster_secrets(spec)


def test_configs_send_the_first_secret() -> None:
    route = RouteConfig(cluster_secrets=("new", "old"), **TOKEN_KEYS)
    server = ServerConfig(cluster_secrets=("new", "old"))
    assert route.cluster_secret == server.cluster_secret == "new"


@pytest.mark.parametrize("secrets", [(), ("",), ("new", "")])
def test_configs_refuse_missing_or_empty_secrets(secrets: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="cluster secret is required"):
        RouteConfig(cluster_secrets=secrets, **TOKEN_KEYS)
    with pytest.raises(ValueError, match="cluster secret is required"):
        ServerConfig(cluster_secrets=secrets)


def test_configs_refuse_a_bare_string() -> None:
    # Its characters would each become an accepted secret.
    with pytest.raises(TypeError):
        ServerConfig(cluster_secrets="secret")  # type: ignore[arg-type]


class _Context:
    def __init__(self, secret: str | None) -> None:
        self._metadata = () if secret is None else ((CLUSTER_SECRET, secret),)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


def test_every_listed_secret_is_accepted_and_no_other() -> None:
    check = SecretCheck(ServerConfig(cluster_secrets=("new", "old")).cluster_secrets)
    check.require(_Context("new"))  # type: ignore[arg-type]
    check.require(_Context("old"))  # type: ignore[arg-type]
    for wrong in ("other", "", None, "new,old"):
        with pytest.raises(PermissionDenied):
            check.require(_Context(wrong))  # type: ignore[arg-type]
