"""`validate(raw_input, schema)`: check a job's input against a schema of
{key: {"type", "required", "default", "constraints"}}, as the SDK does.

Returns {"validated_input": {...}} with defaults filled in and ints widened to float where
the schema asks for float, or {"errors": [...]} with the SDK's messages, in its order.
"""
from __future__ import annotations

import json
from typing import Any


def validate(raw_input: dict, schema: dict) -> dict:
    errors: list[str] = []
    validated = raw_input.copy()
    for key in raw_input:
        if key not in schema:
            errors.append(f"Unexpected input. {key} is not a valid input option.")
    for key, rules in list(schema.items()):       # rules given as JSON text are decoded
        if not isinstance(rules, dict):
            try:
                schema[key] = json.loads(rules)
            except json.JSONDecodeError:
                errors.append(f"Schema error, {key} is not a dictionary.")
    for key, rules in schema.items():
        if "type" not in rules:
            errors.append(f"Schema error, missing type for {key}.")
        if "required" not in rules:
            errors.append(f"{key} is a required input.")
        elif rules["required"] and key not in raw_input:
            errors.append(f"{key} is a required input.")
        elif not rules["required"] and key not in raw_input:
            if "default" in rules:
                validated[key] = rules["default"]
            else:
                errors.append(f"Schema error, missing default value for {key}.")
    for key, rules in schema.items():
        if key in validated:
            if not _check_type(key, rules, validated, errors):
                continue
        if "constraints" in rules and not rules["constraints"](validated.get(key)):
            errors.append(f"{key} does not meet the constraints.")
    return {"errors": errors} if errors else {"validated_input": validated}


def _check_type(key: str, rules: Any, validated: dict, errors: list) -> bool:
    """The type check; False when the SDK skips the key's constraints (a rule that is not
    a dict, or a value of the default's type)."""
    try:
        if rules["type"] is float and type(validated[key]) in (int, float):
            validated[key] = float(validated[key])
    except TypeError:
        return False
    if "default" in rules and isinstance(validated[key], type(rules["default"])):
        return False
    if not isinstance(validated[key], rules["type"]):
        errors.append(f"{key} should be {rules['type']} type, not {type(validated[key])}.")
    return True
