"""YAML + dotted command-line overrides -> a validated pydantic model, with one-line errors naming the key.

    cfg = load_config(Config, "configs/demo.yaml", ["rollout.num_workers=4", "rollout.temperature=0.7"])

Override values are parsed as YAML (``4`` is an int, ``[1, 2]`` a list, ``null`` None). Unknown keys, wrong
types and bad values fail at start-up, before anything expensive starts.
"""

from __future__ import annotations

import difflib
import types
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from actors.redaction import redact_url

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration problem; the message names the key and what to do."""


# Ray custom resources pin a role to the nodes that offer them (deploy/kuberay/ gives each worker group its own:
# rollout, learner, reward); {} = anywhere. Values are per actor (per rank for the learner).
Resources = dict[str, float]


def check_resources(resources: Resources, section: str) -> Resources:
    for name, amount in resources.items():
        if name in ("CPU", "GPU", "memory", "object_store_memory"):
            raise ValueError(
                f"{section}.resources names {name!r}: use {section}.num_cpus / num_gpus for CPU and GPU "
                "(resources holds Ray custom resources, e.g. {rollout: 1})"
            )
        if not amount > 0:
            raise ValueError(f"{section}.resources.{name}={amount}: an amount must be above 0")
    return resources


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        # pydantic's lax mode turns `true` into 1: `rollout.group_size=true` must be an error, not G = 1
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name)
                if isinstance(value, bool) and field is not None and _numeric(field.annotation):
                    raise ValueError(f"{name} must be a number, not {str(value).lower()}")
        return data


def _numeric(annotation: Any) -> bool:
    """int, float, or either of them or None."""
    if annotation in (int, float):
        return True
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return bool(args) and all(a in (int, float) for a in args)
    return False


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _known_keys(ann, prefix + name + ".")
    return keys


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config override {dotted}: '{p}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"config override {item!r} is not of the form key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out.append((key.strip(), value))
    return out


def _explain(
    model: type[BaseModel], err: ValidationError, source: str, overridden: set[str] = frozenset()
) -> ConfigError:
    """One line naming each bad key and where it came from: the file, or the command line's dotted override."""
    by_source: dict[str, list[str]] = {}
    known = _known_keys(model)
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        from_cli = key and any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in overridden)
        where = "command line" if from_cli else source
        if not key and overridden:  # a cross-field check: the file and the overrides together broke it
            where = f"{source} with the command-line overrides"
        lines = by_source.setdefault(where, [])
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            lines.append(f"unknown config key '{key}'{hint}")
        else:
            got = e.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"config key '{key}': {msg}{got_s}" if key else msg)
    return ConfigError("; ".join(f"{src}: " + "; ".join(lines) for src, lines in by_source.items()))


def load_config(model: type[M], path: str | Path | None = None, overrides: list[str] | None = None) -> M:
    tree: dict = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path} (see configs/ for the shipped ones)")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    parsed = parse_overrides(overrides or [])
    for key, value in parsed:
        _set_dotted(tree, key, value)
    if parsed and path is None:
        source = "config (defaults)"
    try:
        return model.model_validate(tree)
    except ValidationError as e:
        raise _explain(model, e, source, {k for k, _ in parsed}) from None


def redact(value: Any) -> Any:
    """The value with any password embedded in a URL (``redis://:pw@host``, ``?password=``) replaced by ``***``
    (``actors.redaction``, the one redaction every log line and message uses)."""
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_url(value)
    return value


def dump_config(cfg: BaseModel) -> str:
    """The config as YAML, for printing and for run folders: passwords in URLs are redacted (keys are only ever
    named by their environment variables)."""
    return yaml.safe_dump(redact(cfg.model_dump(mode="json")), sort_keys=False)
