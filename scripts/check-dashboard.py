"""Checks Grafana dashboard JSON against Grafana's own dashboard schema, as the Grafana
Foundation SDK's models carry it (generated from Grafana's schema): every key must be one the
schema knows, every value of its type, every required field present; Prometheus queries are
checked against the Prometheus query schema.

Usage: check-dashboard.py FILE...   Exits 1 and lists each problem with its path."""

import enum
import inspect
import json
import re
import sys
import typing

from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import prometheus

SCALARS = {str: (str,), int: (int,), float: (int, float), bool: (bool,)}


def attribute(key, hints):
    """The model attribute a JSON key maps to (camelCase to snake_case; `id` is `id_val`)."""
    snake = re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower()
    for name in (snake, snake + "_val"):
        if name in hints:
            return name
    return None


def check(value, annotation, path, errors):
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation in (typing.Any, object):
        return
    if origin is typing.Union:
        if value is None and type(None) in args:
            return
        options = [a for a in args if a is not type(None)]
        attempts = []
        for option in options:
            found = []
            check(value, option, path, found)
            if not found:
                return
            attempts.append(found)
        errors.extend(min(attempts, key=len))
        return
    if origin is typing.Literal:
        if value not in args:
            errors.append(f"{path}: {value!r} is not one of {list(args)}")
        return
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            check(item, args[0] if args else typing.Any, f"{path}[{i}]", errors)
        return
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{path}: expected an object, got {type(value).__name__}")
            return
        for k, item in value.items():
            check(item, args[1] if len(args) > 1 else typing.Any, f"{path}.{k}", errors)
        return
    if inspect.isclass(annotation) and issubclass(annotation, enum.Enum):
        if value not in {m.value for m in annotation}:
            errors.append(f"{path}: {value!r} is not one of {[m.value for m in annotation]}")
        return
    if annotation in SCALARS:
        ok = isinstance(value, SCALARS[annotation]) and not (
            annotation is not bool and isinstance(value, bool)
        )
        if not ok:
            errors.append(f"{path}: expected {annotation.__name__}, got {value!r}")
        return
    if inspect.isclass(annotation) and annotation.__module__.endswith("cog.variants"):
        # A query: its shape depends on the data source; Prometheus is the one used here.
        check_object(value, prometheus.Dataquery, path, errors)
        return
    if inspect.isclass(annotation):
        check_object(value, annotation, path, errors)
        return
    errors.append(f"{path}: cannot check against {annotation!r}")


def check_object(value, cls, path, errors):
    if not isinstance(value, dict):
        errors.append(f"{path}: expected an object ({cls.__name__}), got {value!r}")
        return
    hints = typing.get_type_hints(cls)
    seen = set()
    for key, item in value.items():
        name = attribute(key, hints)
        if name is None:
            errors.append(f"{path}.{key}: not a field of {cls.__name__}")
            continue
        seen.add(name)
        check(item, hints[name], f"{path}.{key}", errors)
    for name, annotation in hints.items():
        optional = typing.get_origin(annotation) is typing.Union and type(None) in typing.get_args(
            annotation
        )
        if not optional and name not in seen and name not in DEFAULTED.get(cls, ()):
            errors.append(f"{path}: {cls.__name__} requires {name}")


# Gauges of a whole queue, exported alike by every pod that reads it (N pods, N copies).
QUEUE_WIDE = ("mpconnect_queue_depth", "mpconnect_queue_oldest_message_age_seconds")

# Fields the schema marks required but gives a default Grafana fills in on load.
DEFAULTED = {
    model.Panel: ("type_val",),
}


def main(paths):
    failed = False
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                dashboard = json.load(f)
        except (OSError, ValueError) as e:
            print(f"{path}: cannot read: {e}")
            failed = True
            continue
        errors = []
        check_object(dashboard, model.Dashboard, "$", errors)
        # The model must also load it: Grafana's own decoding, as the SDK does it.
        if not errors:
            try:
                model.Dashboard.from_json(dashboard)
            except Exception as e:  # noqa: BLE001 - any failure to load is the finding
                errors.append(f"$: the dashboard model cannot load it: {e!r}")
        for panel in dashboard.get("panels", []):
            if isinstance(panel, dict) and panel.get("type") != "row" and not panel.get("targets"):
                errors.append(f"$.panels[id={panel.get('id')}]: a panel with no query")
            for target in panel.get("targets", []) if isinstance(panel, dict) else []:
                expr = target.get("expr", "") if isinstance(target, dict) else ""
                for gauge in QUEUE_WIDE:
                    summed = rf"\b(?:sum|avg)\s*(?:(?:by|without)\s*\([^()]*\)\s*)?\(\s*{gauge}\b"
                    if re.search(summed, expr):
                        errors.append(
                            f"$.panels[id={panel.get('id')}]: {expr!r} sums {gauge}, which every pod "
                            "exports with the queue's whole value: read it with max"
                        )
        for error in errors:
            print(f"{path}: {error}")
        failed |= bool(errors)
        if not errors:
            print(f"{path}: a valid Grafana dashboard ({len(dashboard.get('panels', []))} panels)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
