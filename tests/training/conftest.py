"""Fixtures for the training data tests: one fake UAHiRISE site per session, served on
loopback, and a scrape of it for the patch builder and split tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.training.fakesite import DTM_ROOT, SiteServer, Terrain, build_site
from training.scrape import Options, scrape


@pytest.fixture(scope="session")
def terrain() -> Terrain:
    return Terrain()


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory, terrain: Terrain) -> Path:
    root = tmp_path_factory.mktemp("uahirise")
    build_site(root, terrain)
    return root


@pytest.fixture(scope="session")
def _running(site: Path) -> Iterator[SiteServer]:
    server = SiteServer(site).start()
    yield server
    server.stop()


@pytest.fixture
def server(_running: SiteServer) -> SiteServer:
    """The site's server with a clean request log and no faults set."""
    _running.reset()
    return _running


def options(server: SiteServer, out: Path, **changes: object) -> Options:
    """Scrape options for the loopback site: no politeness delay, quick retries."""
    settings = {"base_url": server.url + DTM_ROOT, "workers": 2, "delay": 0.0,
                "retries": 2, "backoff": 0.01, "timeout": 5.0, **changes}
    return Options(out, **settings)


@pytest.fixture(scope="session")
def scraped(_running: SiteServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete scrape of the site, shared read-only by the tiles and splits tests."""
    out = tmp_path_factory.mktemp("scraped")
    _running.reset()  # no fault left over from a scraper test
    scrape(options(_running, out))
    return out
