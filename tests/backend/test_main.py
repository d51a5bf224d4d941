"""The application factory: the static frontend is served at / when it exists, behind the API."""

from fastapi.testclient import TestClient

from backend import main


def test_the_frontend_is_served_when_it_exists(tmp_path, monkeypatch):
    (tmp_path / "index.html").write_text("<h1>Dreambooth Studio</h1>")
    monkeypatch.setattr(main, "FRONTEND_DIR", tmp_path)
    client = TestClient(main.create_app())
    assert client.get("/").text == "<h1>Dreambooth Studio</h1>"
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/api/info").status_code == 401


def test_without_a_frontend_only_the_api_answers(tmp_path, monkeypatch):
    monkeypatch.setattr(main, "FRONTEND_DIR", tmp_path)
    client = TestClient(main.create_app())
    assert client.get("/").status_code == 404
    assert client.get("/healthz").status_code == 200
