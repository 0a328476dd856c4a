"""A study's configuration: one config file on its base, overlays, overrides; checked whole, every error at once.

A study is one config file. It names its ``base``: ``defaults`` (``config/defaults.yaml``: the settings,
prompts and scenarios every study shares, and no data set, model or run; also what a file without ``base``
gets), another config file (a path relative to it, e.g. ``config.yaml`` for the test preset of the default
study) or ``none``. The file is merged over its base (mappings merge key by key, lists and values replace);
further config files are overlays merged over that (they name no base), then ``--config`` values. So a user
config states only what it wants: it inherits no runs, models or data sets of the default study.

:func:`config_errors` checks the merged config against the schema and returns every problem at once, each
naming the key's path; a key the schema does not know gets the nearest known one suggested.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path

import yaml

from mmcal.errors import ConfigError

DEFAULTS_FILE = Path("config") / "defaults.yaml"
SCHEMA_FILE = Path("workflow") / "schemas" / "config.schema.yaml"


def merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base``: mappings key by key, everything else replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of keys, got {type(data).__name__}")
    return data


def resolve_file(path: str | Path, root: str | Path, _seen: tuple = ()) -> dict:
    """A config file merged over its base chain (``base`` removed)."""
    path = Path(path)
    if path.resolve() in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path.resolve()))
        raise ConfigError(f"config file {path}: its base chain loops ({chain})")
    data = read_config_file(path)
    base = data.pop("base", "defaults")
    if base == "none":
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"config file {path}: base must be 'defaults', 'none' or a config file, not {base!r}")
    base_path = Path(root) / DEFAULTS_FILE if base == "defaults" else path.parent / base
    if not base_path.is_file():
        raise ConfigError(f"config file {path}: its base {base!r} ({base_path}) does not exist")
    return merge(resolve_file(base_path, root, (*_seen, path.resolve())), data)


def load_study(files: list[str | Path], overrides: dict | None = None, root: str | Path = ".") -> dict:
    """The study of ``files`` (the first on its base chain, the others as overlays) and ``overrides``."""
    if not files:
        raise ConfigError("no config file")
    study = resolve_file(files[0], root)
    for extra in files[1:]:
        overlay = read_config_file(extra)
        if "base" in overlay:
            raise ConfigError(
                f"config file {extra}: only the first config file names a base ({files[0]}); "
                "a later one is merged over it as it is"
            )
        study = merge(study, overlay)
    return with_derived_defaults(merge(study, overrides or {}))


def with_derived_defaults(study: dict) -> dict:
    """Defaults that come from the study itself: the main group of the figures and tables (``parts.main``) is
    the first run's data set, scenario and prompt unless the config names one."""
    runs = study.get("runs") or []
    parts = study.setdefault("parts", {})
    if "main" not in parts and runs and all(runs[0].get(k) for k in ("datasets", "scenarios", "prompts")):
        first = runs[0]
        parts["main"] = {
            "dataset": first["datasets"][0],
            "scenario": first["scenarios"][0],
            "prompt": first["prompts"][0],
        }
    return study


def load_schema(root: str | Path = ".") -> dict:
    return yaml.safe_load((Path(root) / SCHEMA_FILE).read_text())


def _key_path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _suggestion(unknown: str, known) -> str:
    close = difflib.get_close_matches(unknown, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _messages(error) -> list[str]:
    """One line per problem of a jsonschema error, naming the key path; unknown keys with a suggestion."""
    where = _key_path(error.absolute_path)
    if error.validator == "additionalProperties" and error.validator_value is False:
        known = (error.schema.get("properties") or {}).keys()
        extra = [k for k in error.instance if k not in known and not _matches_pattern(k, error.schema)]
        prefix = "" if where == "(top level)" else f"{where}."
        return [f"{prefix}{key}: unknown key{_suggestion(key, known)}" for key in extra]
    if error.validator in ("oneOf", "anyOf") and error.context:
        # the branch that came closest: the one with the fewest errors of its own
        best = min(
            {e.relative_schema_path[0] for e in error.context},
            key=lambda i: sum(1 for e in error.context if e.relative_schema_path[0] == i),
        )
        return [m for e in error.context if e.relative_schema_path[0] == best for m in _messages(e)]
    return [f"{where}: {error.message}"]


def _matches_pattern(key: str, schema: dict) -> bool:
    import re

    return any(re.search(p, key) for p in (schema.get("patternProperties") or {}))


def config_errors(config: dict, schema: dict) -> list[str]:
    """Every problem of ``config`` against ``schema``, sorted by key path (empty: valid)."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    return list(dict.fromkeys(m for e in errors for m in _messages(e)))


def check(config: dict, schema: dict, what: str = "the config") -> None:
    """Raise one ConfigError listing every problem of ``config``."""
    problems = config_errors(config, schema)
    if problems:
        listed = "\n".join(f"  {p}" for p in problems)
        raise ConfigError(f"{what} has {len(problems)} problem(s):\n{listed}")
