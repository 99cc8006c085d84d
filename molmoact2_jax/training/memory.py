"""What a compiled train step needs in device memory: the per-device byte report (run_info.json,
molmoact2-compile) and the largest buffers of an HLO module (where to look when a step does not fit)."""
from __future__ import annotations

import re

import numpy as np


def memory_report(compiled, peak_is_live: bool = True) -> dict:
    """Per-device bytes of a compiled executable: the argument / output / alias / temp split, their sum
    total = argument + output + temp - alias (a donated buffer is both an argument and an output but occupies memory
    once), and `peak`, the compiler's own figure for the most memory live at once (None where the backend gives
    none: XLA:CPU reports 0). The sum is an upper bound: temporaries that are never live together, and outputs
    written into buffers the arguments freed, are counted once each there; on a long-context TPU step it read
    125.1 GiB where the peak was 87.6 GiB. `needed` is what decides whether a program fits: the peak when there is
    one and `peak_is_live`, else the sum; `needed_by` says which. XLA:CPU's peak is the arguments alone (it left out
    a 507 GiB temporary here): pass peak_is_live=False there."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    parts = dict(argument=int(m.argument_size_in_bytes), output=int(m.output_size_in_bytes),
                 alias=int(m.alias_size_in_bytes), temp=int(m.temp_size_in_bytes))
    parts["total"] = parts["argument"] + parts["output"] + parts["temp"] - parts["alias"]
    parts["generated_code"] = int(m.generated_code_size_in_bytes)
    peak = int(getattr(m, "peak_memory_in_bytes", 0) or 0)
    parts["peak"] = peak or None
    use_peak = bool(peak) and peak_is_live
    parts["needed"] = peak if use_peak else parts["total"]
    parts["needed_by"] = "peak" if use_peak else "total"
    return parts


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "f8e4m3fn": 1, "f8e5m2": 1}
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\w+)\[([\d,]*)\]\S*\s+([\w\-]+)\(")
_OP_NAME = re.compile(r'op_name="([^"]+)"')


def largest_buffers(hlo_text: str, n: int = 8) -> list[dict]:
    """The `n` largest array values of an HLO module (name, op, shape, bytes, source op name): where to look when
    a step does not fit."""
    found = {}
    for line in hlo_text.splitlines():
        m = _INSTR.match(line)
        if not m or m.group(2) not in _DTYPE_BYTES:
            continue
        name, dtype, dims, op = m.groups()
        shape = tuple(int(d) for d in dims.split(",") if d)
        size = int(np.prod(shape, dtype=np.int64)) * _DTYPE_BYTES[dtype]
        src = _OP_NAME.search(line)
        key = (src.group(1) if src else name, dtype, shape)
        if size > found.get(key, {}).get("bytes", -1):
            found[key] = dict(name=name, op=op, shape=f"{dtype}[{','.join(map(str, shape))}]", bytes=size,
                              source=src.group(1) if src else "")
    return sorted(found.values(), key=lambda r: -r["bytes"])[:n]
