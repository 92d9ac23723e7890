"""What every ``bridgenet`` verb shares: logging set-up, ``--params``/``--set``, clean failures."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bridgenet.config import DEFAULT_PARAMS, ConfigError, load_params

LOGGER = logging.getLogger("bridgenet")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def with_params(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give a verb ``--params FILE`` and repeated ``--set key=value``; pass ``params``."""

    @click.option(
        "--params",
        "params_file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=DEFAULT_PARAMS,
        show_default=True,
        help="Parameter file.",
    )
    @click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="SECTION.KEY=VALUE",
        help="Override one parameter (value parsed as YAML); repeatable.",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, params_file: Path, overrides: tuple[str, ...], **kwargs: Any) -> Any:
        try:
            params = load_params(params_file, overrides)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
        return func(*args, params=params, **kwargs)

    return wrapper


def fail_cleanly(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the project's expected errors into a one-paragraph message and exit 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
            LOGGER.debug("failure", exc_info=True)
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None

    return wrapper
