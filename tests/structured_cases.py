"""JSON Schemas of real-world shape for the structured-output tests: (name, prompt, schema).
Strings carry maxLength and arrays maxItems, as extraction schemas do, so a small model finishes."""

from __future__ import annotations

NAME = {"type": "string", "minLength": 1, "maxLength": 24}
SHORT = {"type": "string", "maxLength": 40}


def obj(props: dict, required=None, **extra) -> dict:
    return {"type": "object", "properties": props, "required": list(required or props), "additionalProperties": False,
            **extra}


SCHEMAS = [
    ("person", "Describe a person.", obj({"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120}})),
    ("city", "Name a European capital and its country.", obj({"city": NAME, "country": NAME})),
    ("boolean_flags", "Is water wet? Is fire cold?", obj({"water_is_wet": {"type": "boolean"},
                                                           "fire_is_cold": {"type": "boolean"}})),
    ("enum_sentiment", "Classify: 'I love this product!'",
     obj({"sentiment": {"enum": ["positive", "negative", "neutral"]}, "confidence": {"type": "number", "minimum": 0,
                                                                                      "maximum": 1}})),
    ("const_version", "Give an API response.", obj({"version": {"const": "v1"}, "ok": {"type": "boolean"}})),
    ("nested_address", "Give a person with an address.",
     obj({"name": NAME, "address": obj({"street": SHORT, "city": NAME, "zip": {"type": "string",
                                                                               "pattern": "^[0-9]{5}$"}})})),
    ("array_tags", "List tags for a blog post about Python.",
     obj({"tags": {"type": "array", "items": NAME, "minItems": 2, "maxItems": 4}})),
    ("array_of_objects", "List two fruits with their colours.",
     obj({"fruits": {"type": "array", "minItems": 1, "maxItems": 3, "items": obj({"name": NAME, "colour": NAME})}})),
    ("integers_range", "Pick three dice rolls.",
     obj({"rolls": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 6},
                    "minItems": 3, "maxItems": 3}})),
    ("date_format", "When did the first moon landing happen?", obj({"event": SHORT, "date": {"type": "string",
                                                                                            "format": "date"}})),
    ("email_format", "Give a contact for support.", obj({"name": NAME, "email": {"type": "string", "format": "email",
                                                                                 "maxLength": 40}})),
    ("uuid_format", "Create an order record.", obj({"order_id": {"type": "string", "format": "uuid"},
                                                    "quantity": {"type": "integer", "minimum": 1, "maximum": 99}})),
    ("optional_fields", "Describe a book.", obj({"title": SHORT, "author": NAME, "year": {"type": "integer"},
                                                 "isbn": SHORT}, required=["title", "author"])),
    ("anyof_id", "Give an identifier for user 42.",
     obj({"id": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": "^u[0-9]{1,6}$"}]}})),
    ("nullable", "Describe a pet; leave the nickname empty if unknown.",
     obj({"species": NAME, "nickname": {"anyOf": [NAME, {"type": "null"}]}})),
    ("oneof_shape", "Describe a circle of radius 2.",
     obj({"shape": {"oneOf": [obj({"kind": {"const": "circle"}, "radius": {"type": "number", "minimum": 0}}),
                              obj({"kind": {"const": "square"}, "side": {"type": "number", "minimum": 0}})]}})),
    ("extraction_invoice", "Extract: 'Invoice 1043 from ACME Ltd, total 250.00 EUR, due 2024-07-01.'",
     obj({"invoice_number": {"type": "string", "pattern": "^[0-9]{1,8}$"}, "vendor": NAME,
          "total": {"type": "number", "minimum": 0}, "currency": {"enum": ["EUR", "USD", "GBP"]},
          "due_date": {"type": "string", "format": "date"}})),
    ("tool_call", "Call a tool to get the weather in Paris.",
     obj({"tool": {"enum": ["get_weather", "search_web", "send_email"]},
          "arguments": obj({"location": NAME, "unit": {"enum": ["celsius", "fahrenheit"]}})})),
    ("matrix", "Give a 2x2 identity matrix.",
     obj({"rows": {"type": "array", "minItems": 2, "maxItems": 2,
                   "items": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}}})),
    ("recursive_tree", 'Example of a tree: {"name": "root", "children": [{"name": "leaf", "children": []}]}. '
                       "Write a similar tree with one leaf.",
     {"$defs": {"node": obj({"name": NAME, "children": {"type": "array", "maxItems": 2,
                                                        "items": {"$ref": "#/$defs/node"}}})},
      "$ref": "#/$defs/node"}),
    ("ref_reuse", "Give a flight from Paris to Rome.",
     {"$defs": {"airport": obj({"code": {"type": "string", "pattern": "^[A-Z]{3}$"}, "city": NAME})},
      **obj({"from": {"$ref": "#/$defs/airport"}, "to": {"$ref": "#/$defs/airport"}})}),
    ("number_multiple", "Give a price in steps of 0.25.",
     obj({"item": NAME, "price": {"type": "number", "minimum": 0, "maximum": 1000}})),
]

REGEXES = [
    ("phone", "Call us at", r"\([0-9]{3}\) [0-9]{3}-[0-9]{4}"),
    ("iso_date", "Today's date is", r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"),
    ("hex_colour", "The brand colour is", r"#[0-9a-f]{6}"),
    ("yes_no_reason", "Is the sky blue? Answer:", r"(Yes|No), because [a-z ]{5,40}\."),
]

# a small Lark grammar (llguidance's dialect): arithmetic of at most three terms, a term a number or
# a parenthesised pair - a finite language, so every output ends
ARITHMETIC = r"""
start: term | term OP term | term OP term OP term
term: NUMBER | "(" NUMBER OP NUMBER ")"
OP: "+" | "-" | "*"
NUMBER: /[1-9][0-9]?/
"""
