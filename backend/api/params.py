"""Path parameters shared by the routers."""

from typing import Annotated

from fastapi import Path

# A row id in a URL: an integer the database's INTEGER column can hold (larger ones are a 422, not a 500).
RowId = Annotated[int, Path(ge=1, le=2**31 - 1)]
