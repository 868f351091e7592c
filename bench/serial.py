# pickle.dumps + pickle.loads (protocol 5) of the values of bench/serial.lua,
# measured the same way: best of ROUNDS rounds, process CPU time.
import pickle
import sys
import time

BUDGET = float(sys.argv[1]) if len(sys.argv) > 1 else 0.4
ROUNDS = 5
clock = time.process_time

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
        t0 = clock()
        for _ in range(n):
            loads(dumps(v, protocol=5))
        elapsed = clock() - t0
        if elapsed > BUDGET / ROUNDS / 4:
            break
        n *= 4
    n = max(1, int(n * BUDGET / ROUNDS / elapsed))
    best = float("inf")
    for _ in range(ROUNDS):
        t0 = clock()
        for _ in range(n):
            loads(dumps(v, protocol=5))
        best = min(best, (clock() - t0) / n)
    return best


if __name__ == "__main__":
    for name, v in workloads:
        print(f"{name}\t{measure(v) * 1e9:.0f}\tns/dumps+loads")
