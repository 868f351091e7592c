# pickle.dumps + pickle.loads (protocol 5) of the values of bench/serial.lua.
import pickle
import sys
import time

BUDGET = float(sys.argv[1]) if len(sys.argv) > 1 else 0.4

record = {f"field{i}": i * 1.5 for i in range(1, 11)}
array = list(range(1, 1001))

workloads = [
    ("small int", 42),
    ("short string", "hello world"),
    ("10-field table", record),
    ("1000-element array", array),
    ("1 MiB string", b"x" * 2**20),
]


def measure(v):
    dumps, loads = pickle.dumps, pickle.loads
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            loads(dumps(v, protocol=5))
        elapsed = time.perf_counter() - t0
        if elapsed > BUDGET / 4:
            break
        n *= 4
    reps = max(1, int(n * BUDGET / elapsed))
    t0 = time.perf_counter()
    for _ in range(reps):
        loads(dumps(v, protocol=5))
    return (time.perf_counter() - t0) / reps


if __name__ == "__main__":
    for name, v in workloads:
        print(f"{name}\t{measure(v) * 1e9:.0f}\tns/dumps+loads")
