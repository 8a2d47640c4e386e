"""What verifying an export costs: sha256 of the offline MiniLM's weights file (first time, then from the
per-process cache), against loading that model with transformers.

    python benchmarks/manifest_hash.py --repeats 3
"""
import argparse
import time
from pathlib import Path

from lth.artifacts.manifest import _hashed, sha256
from lth.core.models import resolve_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    weights = next(Path(resolve_model("minilm")).glob("*.safetensors"))
    for _ in range(args.repeats):
        _hashed.clear()
        start = time.perf_counter()
        sha256(weights)
        first = time.perf_counter() - start
        start = time.perf_counter()
        sha256(weights)
        print(f"{weights.stat().st_size / 2**20:.1f} MiB: hashed in {first * 1e3:.0f} ms, "
              f"again (cached) {(time.perf_counter() - start) * 1e3:.2f} ms")
    start = time.perf_counter()
    from transformers import AutoModel

    AutoModel.from_pretrained(weights.parent)
    print(f"loading the model (transformers' import included): {(time.perf_counter() - start) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
