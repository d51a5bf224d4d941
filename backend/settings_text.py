"""Training settings in words, from describe_settings(): defaults, preset values and ranges for the command
line's help, and the README's settings table.

`python -m backend.settings_text` rewrites that table in README.md (tests/backend/test_readme_settings.py
fails while it is out of date).
"""

from pathlib import Path

from backend.presets import PRESETS
from backend.training_settings import SettingOut, describe_settings

README = Path(__file__).resolve().parent.parent / "README.md"
REFRESH_COMMAND = ".venv/bin/python -m backend.settings_text"
TABLE_START = (
    "<!-- settings table: generated from backend/training_settings.py by `python -m backend.settings_text` -->"
)
TABLE_END = "<!-- end of the generated settings table -->"


def settings_by_group() -> list[SettingOut]:
    """Every training setting, in the order of their groups, then of TrainingSettings."""
    described = describe_settings()
    return sorted(described.settings, key=lambda setting: described.groups.index(setting.group))


def default_text(setting: SettingOut) -> str:
    """The default in words: a value, 'empty' (null or no items) or 'required'."""
    return "required" if setting.required else value_text(setting.default)


def preset_text(setting: SettingOut) -> str:
    """What presets set other than the default, presets that agree named together, e.g.
    'face preset: 1200, sdxl_object/sdxl_face presets: 500'; '' when none does."""
    by_value: dict[str, list[str]] = {}
    for preset in PRESETS.values():
        if preset.values.get(setting.name, setting.default) != setting.default:
            by_value.setdefault(value_text(preset.values[setting.name]), []).append(preset.name)
    return ", ".join(
        f"{'/'.join(names)} preset{'s' if len(names) > 1 else ''}: {value}" for value, names in by_value.items()
    )


def range_text(setting: SettingOut) -> str:
    """The allowed numbers or items in words, e.g. '1-20000', '(0, 0.001]', '64-1024, multiple of 64', 'up to 8'."""
    parts = [_interval(setting)] if setting.minimum is not None or setting.maximum is not None else []
    if setting.multiple_of:
        parts.append(f"multiple of {setting.multiple_of}")
    if setting.max_items:
        parts.append(f"up to {setting.max_items}")
    return ", ".join(parts)


def value_text(value) -> str:
    if value is None or value == []:
        return "empty"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return _number(value)
    return str(value)


def _number(number: int | float) -> str:
    """Ints as they are; floats short: 2e-6, 0.001, 7.5, 1."""
    return str(number) if isinstance(number, int) else f"{number:g}".replace("e-0", "e-")


def _interval(setting: SettingOut) -> str:
    if setting.minimum is None:
        return f"{'<' if setting.exclusive_maximum else '<='} {_number(setting.maximum)}"
    if setting.maximum is None:
        return f"{'>' if setting.exclusive_minimum else '>='} {_number(setting.minimum)}"
    low, high = _number(setting.minimum), _number(setting.maximum)
    if not (setting.exclusive_minimum or setting.exclusive_maximum):
        return f"{low}-{high}"
    return f"{'(' if setting.exclusive_minimum else '['}{low}, {high}{')' if setting.exclusive_maximum else ']'}"


# ---------------------------------------------------------------------- the README's table


def markdown_table() -> str:
    """The README's `| setting | default | range | meaning |` table, by group."""
    rows = ["| setting | default | range | meaning |", "| --- | --- | --- | --- |"]
    for setting in settings_by_group():
        default = "; ".join(filter(None, [default_text(setting), preset_text(setting)]))
        rows.append(f"| `{setting.name}` | {_cell(default)} | {_range_cell(setting)} | {_cell(setting.help)} |")
    return "\n".join(rows)


def _cell(text: str) -> str:
    """Text as a Markdown table shows it: a token such as <sks> would otherwise be read as an HTML tag."""
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _range_cell(setting: SettingOut) -> str:
    if setting.choices:
        return ", ".join(setting.choices)
    return "bool" if setting.type == "bool" else range_text(setting)


def with_fresh_table(readme: str) -> str:
    """`readme` with a freshly generated table between its markers."""
    if TABLE_START not in readme or TABLE_END not in readme:
        raise ValueError(f"README.md lacks the settings table's markers: {TABLE_START} ... {TABLE_END}")
    head, rest = readme.split(TABLE_START, 1)
    tail = rest.split(TABLE_END, 1)[1]
    return f"{head}{TABLE_START}\n{markdown_table()}\n{TABLE_END}{tail}"


if __name__ == "__main__":
    README.write_text(with_fresh_table(README.read_text()))
