"""The Hub's names for the weights in a diffusers folder, whichever library release wrote them.

transformers 5.6 and later save a CLIPTextModel without the `text_model.` level that its weights sit
under in every public checkpoint (and in transformers 4.x): a folder saved as they are is loaded by
4.x with every text-encoder weight missing and initialised at random, with only a warning. Newer
releases still read the Hub's names, so every folder and file the project writes uses them.
"""

# A model class (config.json's "architectures") -> the level its weights sit under on the Hub.
NESTED_UNDER = {"CLIPTextModel": "text_model."}


def hub_name(architecture: str, name: str) -> str:
    """A weight's or module's name as the Hub's checkpoints of `architecture` have it."""
    level = NESTED_UNDER.get(architecture)
    if level is None or name.startswith(level):
        return name
    return level + name


def needs_renaming(architecture: str, names) -> bool:
    return any(hub_name(architecture, name) != name for name in names)
