"""Fixtures of the serving end-to-end tests (names start with ``serving_``): the training
fixture's data and trained models, a store with that history, real uvicorn servers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e import serving_support as support


@pytest.fixture(scope="session")
def serving_prepared(
    trained_models,  # the session's trained champion models (tests/integration/training_fixtures.py)
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, str, dict[str, str]]:
    """(store URL, MLflow tracking URI, champion versions), once per session."""
    folder = tmp_path_factory.mktemp("serving-shared")
    store_url = support.build_store(folder / "store.sqlite", trained_models.data.events)
    tracking_uri = trained_models.tracking_uri
    return store_url, tracking_uri, support.champion_versions(tracking_uri)


@pytest.fixture(scope="module")
def serving_live(
    serving_prepared: tuple[str, str, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """A real uvicorn server on 127.0.0.1 over a copy of the store: (base URL, store URL)."""
    from serving.app import create_app

    store_url, tracking_uri, _ = serving_prepared
    own = support.copy_store(store_url, tmp_path_factory.mktemp("serving") / "store.sqlite")
    app = create_app(support.settings_for(own, tracking_uri))
    with support.running_server(app) as base_url:
        yield base_url, own
