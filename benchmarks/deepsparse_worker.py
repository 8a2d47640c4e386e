"""DeepSparse as a worker process for `deepsparse_speed.py`: run by the Python of a separate
virtual environment, because DeepSparse's last release (1.8.0, 2024; 1.9.0 on PyPI is an end-of-life stub that
refuses to install) needs numpy < 2 and onnx 1.14, older than lth's.

    python deepsparse_worker.py MODEL.onnx CORES

reads commands on stdin, one a line, and answers "ok" (or "error: ...") on stdout:
    shape FILE.npz   the inputs to run from now on (arrays named as the model's inputs); compiles an engine for
                     their shape the first time, runs it once and saves the first output to FILE.npz.out.npy
    time N           runs the current inputs N times; answers "ok SECONDS", the median
"""
import statistics
import sys
import time

import numpy as np


def main() -> None:
    from deepsparse import Engine

    model, cores = sys.argv[1], int(sys.argv[2])
    compiled, current = {}, None
    for line in sys.stdin:
        command, *rest = line.split()
        try:
            if command == "shape":
                data = np.load(rest[0])
                shape = tuple(data[data.files[0]].shape)
                if shape not in compiled:
                    compiled[shape] = Engine(model=model, batch_size=shape[0], num_cores=cores,
                                             input_shapes=[list(data[name].shape) for name in data.files])
                engine = compiled[shape]
                current = engine, [data[name] for name in engine.input_names]
                np.save(rest[0] + ".out.npy", engine(current[1])[0])
            elif command == "time":
                times = []
                for _ in range(int(rest[0])):
                    start = time.perf_counter()
                    current[0](current[1])
                    times.append(time.perf_counter() - start)
                print(f"ok {statistics.median(times)}", flush=True)
                continue
            else:
                raise ValueError(f"unknown command {command!r}")
            print("ok", flush=True)
        except Exception as exc:  # noqa: BLE001 - the parent prints it and stops
            print(f"error: {type(exc).__name__}: {exc}".replace("\n", " "), flush=True)


if __name__ == "__main__":
    main()
