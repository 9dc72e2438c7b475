"""The Z-Image contract: the fields of a request, their ranges and defaults, the price and
runtime formulas, and the OpenAPI subset they are read from. Pure; imported by the runner's
every layer and by the emulator, so the two can never disagree.
"""

from runner.contract._zimage import (
    AIR_EXAMPLE,
    FIELDS,
    INT64,
    MODEL_DEFAULTS,
    MODELS,
    Advice,
    advise,
    check_field,
    check_lora_key,
    check_lora_strength,
    is_integer,
    is_number,
    lora_dict,
    number_text,
    parse_size,
    price_buzz,
    runtime_s,
    shown,
    step_input,
    suggestion,
)

__all__ = [
    "AIR_EXAMPLE",
    "Advice",
    "FIELDS",
    "INT64",
    "MODELS",
    "MODEL_DEFAULTS",
    "advise",
    "check_field",
    "check_lora_key",
    "check_lora_strength",
    "is_integer",
    "is_number",
    "lora_dict",
    "number_text",
    "parse_size",
    "price_buzz",
    "runtime_s",
    "shown",
    "step_input",
    "suggestion",
]
