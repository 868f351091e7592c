"""Twin of bench/mpi.lua: mpi4py.futures (Debian's python3-mpi4py). Run by
bench/mpi-run as: mpirun --oversubscribe -n 3 /usr/bin/python3 -m mpi4py.futures bench/mpi4py_futures.py
(rank 0 runs this script, ranks 1..2 serve as workers)."""
import time
from mpi4py.futures import MPIPoolExecutor


def report(name, value, unit):
    print("%s\t%.4f\t%s" % (name, value, unit), flush=True)


def square(x):
    return x * x


if __name__ == "__main__":
    with MPIPoolExecutor() as ex:
        list(ex.map(square, range(1000)))          # warm up
        n = 10000
        t0 = time.perf_counter()
        r = list(ex.map(square, range(n)))          # chunksize 1 (the default)
        dt = time.perf_counter() - t0
        assert r[-1] == (n - 1) ** 2
        report("map x*x 1e4 ints, chunksize 1", dt / n * 1e6, "us/item")
        n = 1000000
        t0 = time.perf_counter()
        r = list(ex.map(square, range(n), chunksize=10000))
        dt = time.perf_counter() - t0
        assert r[-1] == (n - 1) ** 2
        report("map x*x 1e6 ints, chunksize 10000", dt / n * 1e6, "us/item")
        n = 2000
        t0 = time.perf_counter()
        for i in range(n):
            assert ex.submit(square, i).result() == i * i
        dt = time.perf_counter() - t0
        report("submit + result, one at a time (2000)", dt / n * 1e6, "us/task")
