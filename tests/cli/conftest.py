"""CLI tests run `dreambooth` as a subprocess against the same stack the browser tests use."""

from tests.browser.conftest import stack  # noqa: F401  (the API + one worker, demo mode)
