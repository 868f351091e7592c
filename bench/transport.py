# Pipe, Queue and JoinableQueue throughput: the tutorial's programs; twin of bench/transport.lua.
import multiprocessing as mp
import os
import resource
import sys
import time

COUNTS = [10000, 100000]
if os.environ.get("BENCH_QUICK") != "1":
    COUNTS.append(1000000)
# Best of a few rounds (interleaved), as bench/transport.lua: the machine is shared.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def report(name, seconds, n):
    print(f"{name}\t{seconds / n * 1e6:.4f}\tus/msg", flush=True)


def pipe_reader(pipe):
    out, inp = pipe
    inp.close()
    while True:
        if out.recv() == "DONE":
            break


def pipe_run(n):
    out, inp = mp.Pipe()
    p = mp.Process(target=pipe_reader, args=((out, inp),))
    t0 = time.perf_counter()
    p.start()
    out.close()
    for i in range(n):
        inp.send(i)
    inp.send("DONE")
    p.join()
    return time.perf_counter() - t0


def queue_reader(q):
    while True:
        if q.get() == "DONE":
            break


def joinable_reader(q):
    while True:
        msg = q.get()
        q.task_done()
        if msg == "DONE":
            break


def queue_run(n, make, reader):
    q = make()
    p = mp.Process(target=reader, args=(q,))
    t0 = time.perf_counter()
    p.start()
    for i in range(n):
        q.put(i)
    q.put("DONE")
    p.join()
    return time.perf_counter() - t0


if __name__ == "__main__":
    mp.set_start_method("fork")
    for n in COUNTS:
        label = "1e6" if n >= 1000000 else "1e5" if n >= 100000 else "1e4"
        best = [float("inf")] * 3
        for _ in range(ROUNDS):
            best[0] = min(best[0], pipe_run(n))
            best[1] = min(best[1], queue_run(n, mp.Queue, queue_reader))
            best[2] = min(best[2], queue_run(n, mp.JoinableQueue, joinable_reader))
        report(f"Pipe {label} integers", best[0], n)
        report(f"Queue {label} integers", best[1], n)
        report(f"JoinableQueue {label} integers", best[2], n)
    # One process putting and taking its own items: nobody to wait for.
    n = 100000
    best = [float("inf")] * 2
    for _ in range(ROUNDS):
        q = mp.Queue()
        t0 = time.perf_counter()
        for i in range(n):
            q.put(i)
            q.get()
        best[0] = min(best[0], time.perf_counter() - t0)
        a, b = mp.Pipe()
        t0 = time.perf_counter()
        for i in range(n):
            a.send(i)
            b.recv()
        best[1] = min(best[1], time.perf_counter() - t0)
    report("Queue put+get in one process, 1e5", best[0], n)
    report("Pipe send+recv in one process, 1e5", best[1], n)
    print(f"peak RSS, writer\t{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\tKiB")
    print(f"peak RSS, largest reader\t{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\tKiB")
