"""Liveness and readiness probes."""

import shutil

import pytest

from backend import queue
from backend.api import health
from backend.db import make_engine
from backend.queue import make_celery
from backend.settings import Settings, get_settings


def test_healthz_needs_nothing(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_checks_database_and_broker(client, database_url, broker):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok", "file_store": "ok"}}


def test_readyz_names_an_unreachable_broker(client, database_url, monkeypatch):
    dead = make_celery(Settings(broker_url="redis://127.0.0.1:1/0"))
    monkeypatch.setattr(queue, "client", lambda: dead)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "checks": {"database": "ok", "broker": "unavailable", "file_store": "ok"},
    }


def test_readyz_names_an_unreachable_database(client, broker, monkeypatch):
    dead = make_engine("postgresql+psycopg://root@127.0.0.1:1/nothing?connect_timeout=2")
    monkeypatch.setattr(health, "get_engine", lambda: dead)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "unavailable", "broker": "ok", "file_store": "ok"}


def test_readyz_names_a_file_store_that_takes_no_files(client, database_url, broker, tmp_path, monkeypatch):
    # note: a folder under a plain file cannot be made by anyone (a read-only mode would not stop root)
    (tmp_path / "a-file").write_text("")
    monkeypatch.setattr(get_settings(), "data_dir", tmp_path / "a-file" / "data")
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "checks": {"database": "ok", "broker": "ok", "file_store": "unavailable"},
    }


def test_readyz_names_a_file_store_short_of_space(client, database_url, broker, data_dir, monkeypatch):
    free = shutil.disk_usage(data_dir).free
    monkeypatch.setattr(get_settings(), "ready_min_free_bytes", free + 2**30)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "broker": "ok", "file_store": "unavailable"}
    monkeypatch.setattr(get_settings(), "ready_min_free_bytes", free // 2)
    assert client.get("/readyz").status_code == 200
    assert not [path.name for path in data_dir.iterdir() if path.name.startswith(".readyz-")]  # the probe file went


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes_need_no_token(client, database_url, broker, path):
    assert client.get(path).status_code == 200
