"""Which scaled-dot-product-attention kernel is fastest for the SD-Turbo UNet's attention shapes.

`python -m bench.sdpa` prints the median ms of each PyTorch SDPA backend for the self- and
cross-attention shapes of a 512x512 (latent 64x64) UNet at batch 1 and 2.
"""

from __future__ import annotations

import json
import sys

import torch


def shapes(batch: int) -> list[tuple[str, tuple[int, int, int, int], int]]:
    # (name, (B, heads, q_len, head_dim), kv_len); SD 2.1: 64 channels a head, 5/10/20 heads.
    out = []
    for level, (tokens, heads) in enumerate([(4096, 5), (1024, 10), (256, 20)]):
        out.append((f"self L{level}", (batch, heads, tokens, 64), tokens))
        out.append((f"cross L{level}", (batch, heads, tokens, 64), 77))
    return out


def main() -> int:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from .timing import graph_ms

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    rows = {}
    for batch in (1, 2):
        for name, (b, h, n, d), kv in shapes(batch):
            q = torch.randn(b, h, n, d, device="cuda", dtype=torch.float16)
            k = torch.randn(b, h, kv, d, device="cuda", dtype=torch.float16)
            v = torch.randn_like(k)
            row = {}
            for label, backend in backends.items():
                try:
                    with sdpa_kernel([backend]):
                        row[label] = round(graph_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)), 4)
                except Exception as exc:  # noqa: BLE001 - a backend may not support a shape
                    row[label] = f"n/a ({type(exc).__name__})"
            with torch.no_grad():
                row["default"] = round(graph_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)), 4)
            rows[f"b{batch} {name}"] = row
            print(f"b{batch} {name}: {row}", flush=True)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
