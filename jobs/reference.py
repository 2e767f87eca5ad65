"""`sas-ray config [STAGE]` and docs/config.md: every key of a stage's config with its type, default and meaning,
generated from the pydantic models of sas_ray/config.py (types, defaults, bounds) and the comments beside their
fields (meaning), so the reference cannot drift from the code. `sas-ray config --markdown > docs/config.md`
regenerates the document; a test checks it is current.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import re
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass
from functools import cache

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from sas_ray import config as config_module

SECTION = "section"
COMMON_MEANINGS = {  # keys every stage has, explained once
    "storage": "fsspec options for every URL of this stage (e.g. S3 endpoint_url, key, secret)",
    "progress": "show a progress bar on the terminal",
}


def stage_models() -> dict[str, type[BaseModel]]:
    """Command -> its config model, in pipeline order, then `run` and `study`."""
    from jobs.study import StudyConfig

    stages = {name: _model_of(field.annotation)
              for name, field in config_module.PipelineConfig.model_fields.items()}
    return {**stages, "run": config_module.PipelineConfig, "study": StudyConfig}


@dataclass(frozen=True)
class Key:
    """One documented key: dotted path (lists as `.N.`), type, default and its sentence."""

    path: str
    type: str
    default: str
    meaning: str


def keys(model: type[BaseModel], prefix: str = "") -> list[Key]:
    """Every key of `model`, nested sections expanded after the key that holds them."""
    out = []
    for name, field in model.model_fields.items():
        nested = _model_of(field.annotation)
        path = f"{prefix}{name}"
        out.append(Key(path, type_name(field.annotation, field.metadata), default_text(field), meaning(model, name)))
        if nested is not None and not (model is config_module.PipelineConfig):
            many = typing.get_origin(_strip_none(field.annotation)) is list
            out += keys(nested, f"{path}.N." if many else f"{path}.")
    return out


def meaning(model: type[BaseModel], name: str) -> str:
    """The comment beside the field in its class, else its section's docstring, else the common meaning."""
    own = field_comments(model).get(name)
    if own:
        return own
    nested = _model_of(model.model_fields[name].annotation)
    if nested is not None and nested.__doc__:
        return _first_sentence(nested.__doc__)
    return COMMON_MEANINGS.get(name, "")


@cache
def field_comments(model: type[BaseModel]) -> dict[str, str]:
    """Field name -> the comment on the line where its definition ends, with the comment-only lines after it."""
    try:
        source = textwrap.dedent(inspect.getsource(model))
    except (OSError, TypeError):
        return {}
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    lines = source.splitlines()
    out = {}
    for stmt in ast.parse(source).body[0].body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.end_lineno in comments:
            parts, line = [comments[stmt.end_lineno]], stmt.end_lineno + 1
            while line in comments and lines[line - 1].lstrip().startswith("#"):
                parts.append(comments[line])
                line += 1
            out[stmt.target.id] = " ".join(p for p in parts if p)
    return out


def _first_sentence(doc: str) -> str:
    return re.split(r"(?<=\.)\s+(?=[A-Z`])", " ".join(doc.split()), maxsplit=1)[0]


def _strip_none(annotation):
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _model_of(annotation) -> type[BaseModel] | None:
    """The config model a field holds (directly, optionally, or as list items), else None."""
    inner = _strip_none(annotation)
    if typing.get_origin(inner) is list:
        inner = typing.get_args(inner)[0]
    return inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None


def type_name(annotation, metadata=()) -> str:
    """A field's type in YAML words: `int >= 1`, `one of: a, b`, `list of str`, `section`, `... or null`."""
    bounds = []
    for item in metadata:
        for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "length >=")):
            value = getattr(item, attr, None)
            if value is not None:
                bounds.append(f"{symbol} {value:g}" if isinstance(value, float) else f"{symbol} {value}")
    return " ".join([_type_words(annotation), *bounds])


def _type_words(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        words = " or ".join(_type_words(a) for a in rest)
        return f"{words} or null" if len(rest) < len(args) else words
    if origin is typing.Literal:
        return "one of: " + ", ".join(str(a) for a in args)
    if origin is list:
        return f"list of {_type_words(args[0])}"
    if origin is tuple:
        return "[" + ", ".join(_type_words(a) for a in args) + "]"
    if origin is dict or annotation is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return SECTION
    return getattr(annotation, "__name__", str(annotation))


def default_text(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            fields = value.model_dump(mode="json", exclude_defaults=True)
            return "see below" if not fields else ", ".join(f"{k}: {v}" for k, v in fields.items())
        return _yaml(value)
    if field.default is PydanticUndefined:
        return "required"
    return _yaml(field.default)


def _yaml(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return str(value)


# -- output -----------------------------------------------------------------------------------------------------------
def text_reference(stage: str, width: int = 118) -> str:
    """The terminal form: the stage's docstring, then one block per key."""
    model = stage_models()[stage]
    lines = [f"sas-ray {stage} --config FILE.yaml: keys of {model.__name__}", "",
             textwrap.fill(" ".join((model.__doc__ or "").split()), width), ""]
    for key in keys(model):
        lines.append(f"{key.path}  ({key.type}; default {key.default})")
        if key.meaning:
            lines += textwrap.wrap(key.meaning, width, initial_indent="    ", subsequent_indent="    ")
    return "\n".join(lines)


def markdown_reference() -> str:
    """docs/config.md: every stage's keys as a table."""
    lines = ["# Config reference", "",
             "Generated by `sas-ray config --markdown > docs/config.md` from the pydantic models in "
             "`sas_ray/config.py` (types, defaults, bounds) and the comments beside their fields; a test checks that "
             "this file is current. `sas-ray config STAGE` prints the same for one stage. Keys of list items are "
             "written `teachers.N.name`; on the command line `--set teachers.0.batch_size=2` sets the first's. Unknown "
             "keys are errors. The method behind the keys, and where each default comes from: docs/method.md.", ""]
    lines += [" · ".join(f"[{s}](#{s})" for s in stage_models()), ""]
    for stage, model in stage_models().items():
        lines += [f"## {stage}", "", " ".join((model.__doc__ or "").split()), "",
                  "| key | type | default | meaning |", "|---|---|---|---|"]
        lines += [f"| `{k.path}` | {_cell(k.type)} | {_cell(k.default)} | {_cell(k.meaning)} |" for k in keys(model)]
        lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def config_command(args: argparse.Namespace) -> int:
    from sas_ray.errors import ConfigError

    if args.markdown:
        print(markdown_reference(), end="")
        return 0
    stages = stage_models()
    if args.stage_name is None:
        width = max(map(len, stages))
        print("Keys of each command's config file (sas-ray config STAGE shows them; docs/config.md has all):")
        for name, model in stages.items():
            summary = re.sub(r"^`sas-ray \w+`: ", "", _first_sentence(model.__doc__ or ""))
            print(f"  {name:<{width}}  {summary}")
        return 0
    if args.stage_name not in stages:
        raise ConfigError(f"unknown stage {args.stage_name!r}; known: {', '.join(stages)}")
    print(text_reference(args.stage_name))
    return 0


def add_config_command(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Every key of a stage's config file: its type, default and meaning, from the config models "
                          "themselves. Without STAGE, the list of stages.")
    parser.add_argument("stage_name", nargs="?", metavar="STAGE", help="prepare, extract, ..., run, study")
    parser.add_argument("--markdown", action="store_true", help="every stage as markdown (docs/config.md)")
    parser.set_defaults(run=config_command)
