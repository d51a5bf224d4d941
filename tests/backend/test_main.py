"""The application factory: the static frontend is served at / when it exists, behind the API."""

import posixpath
import re

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


def test_the_page_modules_are_served_as_javascript_and_every_import_is_there():
    """The page's ES modules, from index.html's entry through every relative import; none left unused."""
    client = TestClient(main.create_app())
    entry = re.search(r'<script type="module" src="([^"]+)"', client.get("/").text)
    assert entry, "index.html loads no module"
    seen, waiting = set(), [entry.group(1)]
    while waiting:
        path = waiting.pop()
        if path in seen:
            continue
        seen.add(path)
        response = client.get(f"/{path}")
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/javascript"), (path, response.headers["content-type"])
        for imported in re.findall(r'\bfrom "(\.\.?/[^"]+)"', response.text):
            waiting.append(posixpath.normpath(posixpath.join(posixpath.dirname(path), imported)))
    modules = {path.relative_to(main.FRONTEND_DIR).as_posix() for path in main.FRONTEND_DIR.rglob("*.js")}
    assert seen == modules
