"""Module substitution on the engine's own copy of a model (no class is patched globally).

`substitute(root, match, make)` returns a copy of `root` in which every submodule for which
`match(module)` holds is replaced by `make(module)`. Only the containers on the way to a replaced
module are copied (each with its own child table); every other submodule, parameter and buffer is
shared with `root`, so the copy costs no memory and the components' model stays as it was (other
engines and the fallback chain keep using it unchanged).
"""

from __future__ import annotations

import copy
from typing import Callable

import torch

Match = Callable[[torch.nn.Module], bool]
Make = Callable[[torch.nn.Module], torch.nn.Module]


def substitute(root: torch.nn.Module, match: Match, make: Make) -> tuple[torch.nn.Module, int]:
    """(the copy, how many modules were replaced); `root` itself when nothing matched."""
    if match(root):
        return make(root), 1
    replaced: dict[str, torch.nn.Module] = {}
    count = 0
    for name, child in root.named_children():
        new, n = substitute(child, match, make)
        if n:
            replaced[name] = new
            count += n
    if not count:
        return root, 0
    clone = copy.copy(root)  # shallow: shares parameters, buffers and untouched children
    clone._modules = dict(root._modules)  # noqa: SLF001 - the copy's own child table
    clone._modules.update(replaced)  # noqa: SLF001
    return clone, count
