"""Fast structural validation of FHIR R4 JSON, derived from the ``fhir.resources.R4B`` models.

``fhir.resources`` validates every nested element through a Python hook (about 30 µs per
element, 0.5 ms per Observation), which made validation ~97% of a lab message's cost.
This module reads the same models once (their fields, JSON names, cardinality, required
elements, choice groups and primitive types) and compiles them into one pydantic-core
schema per resource type, so a resource is checked in Rust without building any model
object. The checks are those of ``fhir.resources`` (unknown elements, missing required
elements, primitive formats, one value per choice group, a list where the spec has one)
plus one it lacks: a ``uri`` must be free of whitespace over its whole length (FHIR's
``\\S*``, which ``fhir.resources`` applies unanchored, so any string passed).
``tests/unit/test_fhir_validation.py`` keeps both in agreement on valid and invalid input.

The JSON is returned unchanged: nothing is dumped and re-read, so what is validated is
byte for byte what is sent.
"""

from __future__ import annotations

import types
import typing
from functools import cache
from importlib import import_module
from typing import Any, Union

from fhir_core.fhirabstractmodel import FHIRAbstractModel
from fhir_core.types import Date, Decimal, FhirBase, Uri
from pydantic import TypeAdapter, ValidationError
from pydantic_core import SchemaValidator, core_schema

from models.errors import ConfigurationError

__all__ = ["FhirInvalid", "validate_bundle", "validate_resource"]

JSON = dict[str, Any]
_R4B = "fhir.resources.R4B"
_URI = core_schema.str_schema(pattern=r"^\S*$")
# A JSON number (what the builders write), checked in Rust rather than by fhir_core's
# Python hook; date, dateTime and instant are checked against fhir_core's patterns the
# same way, without its calendar check (a 30 February): the builders write dates from
# Python date objects, which cannot hold one.
_DECIMAL = core_schema.union_schema(
    [
        core_schema.int_schema(strict=True),
        core_schema.float_schema(strict=True, allow_inf_nan=False),
    ]
)


class FhirInvalid(ConfigurationError, ValueError):
    """A mapping built a resource that is not valid FHIR R4: the mapping (or a sender's code
    it copies) must change before this message can be published; ``errors`` names each
    element (its path and what is wrong)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        lines = [
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in errors
        ]
        super().__init__("invalid FHIR: " + "; ".join(lines))


def validate_resource(resource: JSON) -> JSON:
    """``resource`` itself once it validates as its ``resourceType``; FhirInvalid otherwise."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        raise FhirInvalid([{"loc": ("resourceType",), "msg": "missing or not a string"}])
    try:
        _validator(resource_type).validate_python(resource)
    except ValidationError as err:
        raise FhirInvalid(
            [{"loc": (resource_type, *e["loc"]), "msg": e["msg"]} for e in err.errors()]
        ) from None
    return resource


def validate_bundle(bundle: JSON) -> JSON:
    """A Bundle and every resource in its entries (each against its own type)."""
    validate_resource(bundle)
    errors: list[dict[str, Any]] = []
    for index, entry in enumerate(bundle.get("entry", ())):
        if "resource" in entry:
            try:
                validate_resource(entry["resource"])
            except FhirInvalid as err:
                errors += [
                    {"loc": ("entry", index, "resource", *e["loc"][1:]), "msg": e["msg"]}
                    for e in err.errors
                ]
    if errors:
        raise FhirInvalid(errors)
    return bundle


@cache
def _validator(resource_type: str) -> SchemaValidator:
    model = _model_class(resource_type)
    definitions: dict[str, core_schema.CoreSchema] = {}
    root = _model_schema(model, definitions, resource_type=resource_type)
    return SchemaValidator(core_schema.definitions_schema(root, list(definitions.values())))


def _model_class(resource_type: str) -> type[FHIRAbstractModel]:
    try:
        module = import_module(f"{_R4B}.{resource_type.lower()}")
        model = getattr(module, resource_type)
    except (ImportError, AttributeError):
        raise FhirInvalid(
            [{"loc": ("resourceType",), "msg": f"unknown resource type {resource_type!r}"}]
        ) from None
    return typing.cast(type[FHIRAbstractModel], model)


def _model_schema(
    model: type[FHIRAbstractModel],
    definitions: dict[str, core_schema.CoreSchema],
    *,
    resource_type: str | None = None,
) -> core_schema.CoreSchema:
    ref = model.__module__ + "." + model.__name__
    if ref in definitions:
        return core_schema.definition_reference_schema(ref)
    definitions[ref] = core_schema.any_schema()  # placeholder: recursive elements
    fields: dict[str, core_schema.TypedDictField] = {}
    choices: dict[str, tuple[list[str], bool]] = {}
    if resource_type is not None:
        fields["resourceType"] = core_schema.typed_dict_field(
            core_schema.literal_schema([resource_type])
        )
    for name, info in model.model_fields.items():
        if name == "fhir_comments":
            continue
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        alias = info.alias or name
        fields[alias] = core_schema.typed_dict_field(
            _field_schema(info.annotation, definitions),
            required=bool(extra.get("element_required")) or info.is_required(),
        )
        group = extra.get("one_of_many")
        if isinstance(group, str):
            names, _ = choices.get(group, ([], False))
            choices[group] = ([*names, alias], bool(extra.get("one_of_many_required")))
    schema: core_schema.CoreSchema = core_schema.typed_dict_schema(
        fields, extra_behavior="forbid", total=False
    )
    if choices:
        schema = core_schema.no_info_after_validator_function(_choice_check(choices), schema)
    definitions[ref] = {**schema, "ref": ref}
    return core_schema.definition_reference_schema(ref)


def _choice_check(choices: dict[str, tuple[list[str], bool]]) -> typing.Callable[[JSON], JSON]:
    def check(value: JSON) -> JSON:
        for group, (names, required) in choices.items():
            present = [name for name in names if name in value]
            if len(present) > 1:
                raise ValueError(f"only one of {group}[x] allowed, got {', '.join(present)}")
            if required and not present:
                raise ValueError(f"{group}[x] is required")
        return value

    return check


def _field_schema(
    annotation: Any, definitions: dict[str, core_schema.CoreSchema]
) -> core_schema.CoreSchema:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(options) == 1:
            return _field_schema(options[0], definitions)
        return core_schema.union_schema([_field_schema(arg, definitions) for arg in options])
    if origin is list:
        (item,) = typing.get_args(annotation)
        return core_schema.list_schema(_field_schema(item, definitions))
    if isinstance(annotation, type) and issubclass(annotation, FhirBase):
        model = annotation.get_model_klass()
        if model.__name__ == "Resource":
            # Bundle.entry.resource, contained: any resource type, each validated
            # against its own type by validate_bundle / validate_resource.
            return core_schema.dict_schema(core_schema.str_schema(), core_schema.any_schema())
        return _model_schema(model, definitions)
    return _primitive_schema(annotation)


@cache
def _primitive_schema(annotation: Any) -> core_schema.CoreSchema:
    if typing.get_origin(annotation) is typing.Annotated:
        _, *metadata = typing.get_args(annotation)
        for kind in metadata:
            if isinstance(kind, Uri):
                return _URI
            if isinstance(kind, Decimal):
                return _DECIMAL
            if isinstance(kind, Date):  # and DateTime, Instant: fhir_core's own patterns
                return core_schema.str_schema(pattern=f"^(?:{kind.pattern.pattern})$")
    return TypeAdapter(annotation).core_schema
