"""The fused decoding kernel (model/kernels/decode_layers.cpp): all transformer blocks of a
decoding pass in one call, for serving on the CPU.

It is compiled on first use with the machine's C++ compiler (about a minute, once per
machine and torch version; the build is cached) and is optional: without a compiler, or if
the build fails, `load_fused_kernel` says why and returns None, and decoding keeps the plain
PyTorch path (FrozenStep), which computes the same thing more slowly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "kernels" / "decode_layers.cpp"
# Up to this many rows per pass the fp16 FBGEMM product is faster than BLAS fp32 on the same
# (fp16-rounded) weights: half the bytes to read matters more inside a whole pass than products
# timed alone suggest (bench/decode_pass.py, ms per pass, fp16 / BLAS: 1 row 0.79 / 1.52,
# 32 rows 4.64 / 5.52, 64 rows 7.94 / 8.07). The pool's batches stay within it by default.
HALF_MAX_ROWS = 64
_SLOTS = 16  # tensors per layer, in the order of the kernel's Slot enum


def load_fused_kernel(kernel_dir: Path, source: Path = SOURCE) -> ModuleType | None:
    """Build (first time, in a folder of kernel_dir) and load the kernel; None, with a
    warning, where it cannot be had."""
    if sys.platform == "win32":
        return None
    flags = ["-O3", "-march=native", "-fopenmp", *_vector_flags()]
    text = source.read_bytes()
    tag = hashlib.sha256(text + torch.__version__.encode() + " ".join(flags).encode()).hexdigest()[:12]
    # One name per build: torch renames a module whose sources changed within a process, which
    # would make the next process rebuild it.
    name = f"memebot_decode_layers_{tag}"
    build_dir = kernel_dir / tag
    library = build_dir / f"{name}.so"
    try:
        if library.exists():
            return _import(name, library)
        from torch.utils import cpp_extension

        build_dir.mkdir(parents=True, exist_ok=True)
        logger.warning("compiling the fused decoding kernel (once per machine, about a minute)")
        # ninja may be installed in the virtual environment without it being on PATH.
        bin_dir = str(Path(sys.executable).parent)
        if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cpp_extension.load(
                name=name,
                sources=[str(source)],
                build_directory=str(build_dir),
                extra_cflags=flags,
                verbose=False,
            )
    except Exception as exc:  # no compiler, no ninja, a build error: the plain path still works
        logger.warning(
            "fused decoding kernel unavailable (%s); using the plain PyTorch path "
            "([model] fused_kernel = false skips this attempt)",
            _first_line(exc),
        )
        return None


def _import(name: str, library: Path) -> ModuleType:
    """A kernel built before: import the library without going through the build tool."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, library)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


def _vector_flags() -> list[str]:
    """Compile ATen's Vectorized<float> (GELU's erf, softmax's exp) for AVX2 where torch's own
    kernels use it; elsewhere its portable fallback is used."""
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        return ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"]
    return []


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


class FusedLayers:
    """The weights of a Transformer's blocks laid out for the kernel; call it as
    `layers(x, k_bufs, v_bufs, visible, n)` -> x after every block (in place)."""

    def __init__(self, kernel: ModuleType, model: torch.nn.Module, half_weights: bool) -> None:
        self.kernel = kernel
        self.n_head = model.config.n_head
        self.half_max_rows = HALF_MAX_ROWS if half_weights else 0
        empty = torch.empty(0)
        weights: list[torch.Tensor] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fbgemm_pack_gemm_matrix_fp16's deprecation notice
            for b in model.blocks:
                weights += [t.detach().float().contiguous() for t in (b.ln_1.weight, b.ln_1.bias)]
                weights += [t.detach().float().contiguous() for t in (b.ln_2.weight, b.ln_2.bias)]
                for layer in (b.attn.qkv, b.attn.proj, b.mlp.fc, b.mlp.proj):
                    w = layer.weight.detach().float()
                    if half_weights:
                        w = w.half().float()  # both products then use the same numbers
                    packed = torch.fbgemm_pack_gemm_matrix_fp16(w) if half_weights else empty
                    weights += [packed, w.t().contiguous(), layer.bias.detach().float().contiguous()]
        assert len(weights) == _SLOTS * len(model.blocks)
        self.weights = weights

    def __call__(
        self,
        x: torch.Tensor,
        k_bufs: Sequence[torch.Tensor],
        v_bufs: Sequence[torch.Tensor],
        visible: torch.Tensor,
        n: int,
    ) -> torch.Tensor:
        return self.kernel.decode_layers(
            x.contiguous(),
            self.weights,
            list(k_bufs),
            list(v_bufs),
            visible,
            n,
            self.n_head,
            self.half_max_rows,
        )
