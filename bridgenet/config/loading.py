"""Reading ``params.yaml``: safe YAML that refuses duplicate keys, then :class:`Params`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from bridgenet.config.params import ConfigError, Params, apply_overrides, params_from_dict

DEFAULT_PARAMS = Path("params.yaml")
LOGGER = logging.getLogger(__name__)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a mapping holding the same key twice (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"duplicate key {key!r} (line {line}; first on line {seen[key]}): "
                    "only one value may be given",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file safely; a duplicate key is an error naming it."""
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc


def load_params(path: str | Path = DEFAULT_PARAMS, overrides: list[str] | tuple[str, ...] = ()) -> Params:
    """Load ``params.yaml`` and apply overrides.

    A missing ``params.yaml`` in the working directory (the default path) means
    the embedded defaults, announced with a warning that names the paths they
    use; any other missing file is an error.
    """
    path = Path(path)
    if path.exists():
        raw = read_yaml(path) or {}
    elif path == DEFAULT_PARAMS:
        raw = {}
    else:
        raise ConfigError(f"parameter file {path} does not exist")
    params = params_from_dict(apply_overrides(raw, overrides), source=str(path), overrides=tuple(overrides))
    if not path.exists():
        LOGGER.warning(
            "no %s in %s: running on the built-in defaults (data.root=%s, data.cache_dir=%s, "
            "train.models_dir=%s, tracking.uri=%s; `bridgenet params` prints them all)",
            path, Path.cwd(), params.data.root, params.data.cache_dir,
            params.train.models_dir, params.tracking.uri,
        )
    return params
