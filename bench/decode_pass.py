"""One decoding pass of the shipped transformer, by batch rows and tokens per row: PyTorch ops
(FrozenStep without the kernel) against the fused kernel, and the kernel's fp16 (FBGEMM) and
fp32 (BLAS) matrix products, so that HALF_MAX_ROWS in model/fused.py can be checked.

    .venv/bin/python bench/decode_pass.py [--checkpoint PATH] [--threads 2] [--reps 40]

Variants take turns on the same inputs, so machine noise hits them alike; medians in ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.config import load_config  # noqa: E402
from model.checkpoint import load_checkpoint  # noqa: E402
from model.fused import load_fused_kernel  # noqa: E402
from model.transformer import FrozenStep  # noqa: E402
from model.vocab import START  # noqa: E402

SHAPES = [(1, 1), (1, 4), (3, 1), (8, 1), (8, 4), (16, 1), (32, 1), (64, 1)]
CACHE_COLUMNS = 40  # a caption about half written


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=40)
    args = parser.parse_args()
    config = load_config()
    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.checkpoint or config.checkpoint_path).build().eval()
    kernel = load_fused_kernel(config.cache_dir / "kernels")
    if kernel is None:
        sys.exit("the fused kernel did not build here (see the warning above)")
    fp16_only, fp32_only = FrozenStep(model, True, kernel), FrozenStep(model, True, kernel)
    assert fp16_only.fused is not None and fp32_only.fused is not None
    fp16_only.fused.half_max_rows = 1 << 30
    fp32_only.fused.half_max_rows = 0  # BLAS on the same fp16-rounded weights
    variants = {
        "PyTorch ops": FrozenStep(model, half_weights=True),
        "kernel": FrozenStep(model, half_weights=True, kernel=kernel),
        "kernel, fp16 only": fp16_only,
        "kernel, BLAS only": fp32_only,
    }
    print(f"ms per pass, {args.threads} threads, {CACHE_COLUMNS} cache columns")
    print(f"{'rows x tokens':<14}" + "".join(f"{name:>19}" for name in variants))
    for rows, tokens in SHAPES:
        template_ids = torch.arange(rows) % 5 + 1
        prompts = torch.randint(3, 60, (rows, CACHE_COLUMNS - 1))
        prompts[:, 0] = START
        inputs = torch.randint(3, 60, (rows, tokens))
        caches = {name: step.prefill(template_ids, prompts, room=tokens) for name, step in variants.items()}
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.reps):
            for name, step in variants.items():
                cache = caches[name][1]
                t = time.perf_counter()
                step.extend(inputs, cache)  # writes the same columns every time: the cache stays as it was
                times[name].append(time.perf_counter() - t)
        print(
            f"{f'{rows} x {tokens}':<14}"
            + "".join(f"{1000 * statistics.median(times[name]):>19.2f}" for name in variants)
        )


if __name__ == "__main__":
    main()
