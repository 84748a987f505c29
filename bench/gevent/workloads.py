"""The report's workloads on gevent, the model evergreen rebuilds.

Run by `evergreen-bench` (bench/src/main.rs) from the venv it creates:

    python workloads.py <workload> <a> <b>

prints one line `RESULT {json}` with the same fields the Rust children print:
`secs` (time measured inside the hub, like the Rust drivers do), `ops`, and for the memory
workloads `bytes_per_task`. Workloads and sizes mean the same as on the Rust runtimes:

    spawn_join N          N x (spawn a greenlet returning a value, get() it)
    yield N               two greenlets each gevent.sleep(0) N times; time halved
    queue_ping_pong N     N round trips over two unbounded gevent.queue.Queue
    one_way_throughput N  N items through a Queue(maxsize=1024), producer -> consumer
    timers T S            T greenlets each gevent.sleep(0.001) S times
    scaling T S           the same, reporting peak memory per greenlet too
    parked_memory N       N greenlets waiting on one gevent.event.Event; RSS growth / N
    tcp_echo C R          C connections x R round trips of 64 bytes over loopback,
                          gevent.server.StreamServer and client greenlets in this process
    scaling_conn C R      C connections to the harness's echo server process (ports in
                          $EVG_ECHO_PORTS), all opened first, then a greenlet per connection
                          doing R round trips of 64 bytes; peak memory per greenlet too
"""

import json
import os
import sys
import time

import gevent
import gevent.event
import gevent.queue
import gevent.server
import gevent.socket

THROUGHPUT_QUEUE_CAPACITY = 1024
MESSAGE = 64


def status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def spawn_join(n):
    start = time.perf_counter()
    for i in range(n):
        gevent.spawn(lambda v=i: v).get()
    return {"secs": time.perf_counter() - start, "ops": n}


def yield_(n):
    def yielder():
        for _ in range(n):
            gevent.sleep(0)

    start = time.perf_counter()
    a, b = gevent.spawn(yielder), gevent.spawn(yielder)
    gevent.joinall([a, b], raise_error=True)
    return {"secs": (time.perf_counter() - start) / 2, "ops": n}


def queue_ping_pong(n):
    q1, q2 = gevent.queue.Queue(), gevent.queue.Queue()

    def ponger():
        for _ in range(n):
            q2.put(q1.get())

    def pinger():
        for i in range(n):
            q1.put(i)
            assert q2.get() == i

    start = time.perf_counter()
    gevent.joinall([gevent.spawn(ponger), gevent.spawn(pinger)], raise_error=True)
    return {"secs": time.perf_counter() - start, "ops": n}


def one_way_throughput(n):
    q = gevent.queue.Queue(maxsize=THROUGHPUT_QUEUE_CAPACITY)

    def consumer():
        total = 0
        for _ in range(n):
            total += q.get()
        return total

    def producer():
        for i in range(n):
            q.put(i)

    start = time.perf_counter()
    c = gevent.spawn(consumer)
    p = gevent.spawn(producer)
    gevent.joinall([p, c], raise_error=True)
    secs = time.perf_counter() - start
    assert c.value == n * (n - 1) // 2
    return {"secs": secs, "ops": n}


def sleepers(tasks, sleeps):
    def sleeper():
        for _ in range(sleeps):
            gevent.sleep(0.001)

    before = status_kib("VmRSS:")
    start = time.perf_counter()
    gs = [gevent.spawn(sleeper) for _ in range(tasks)]
    gevent.joinall(gs, raise_error=True)
    secs = time.perf_counter() - start
    growth = max(0, status_kib("VmHWM:") - before) * 1024
    return {"secs": secs, "ops": tasks * sleeps, "bytes_per_task": growth / tasks}


def parked_memory(n):
    gevent.spawn(lambda: None).join()
    release = gevent.event.Event()
    parked = [0]

    def waiter():
        parked[0] += 1
        release.wait()

    gs = [None] * n  # the list's own memory is allocated before the first reading
    before = status_kib("VmRSS:")
    for i in range(n):
        gs[i] = gevent.spawn(waiter)
    while parked[0] < n:
        gevent.sleep(0)
    after = status_kib("VmRSS:")
    release.set()
    gevent.joinall(gs, raise_error=True)
    return {"bytes_per_task": max(0, after - before) * 1024 / n, "tasks": n}


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def tcp_echo(conns, trips):
    def handle(sock, _addr):
        sock.setsockopt(gevent.socket.IPPROTO_TCP, gevent.socket.TCP_NODELAY, 1)
        while True:
            msg = recv_exact(sock, MESSAGE)
            if msg is None:
                return
            sock.sendall(msg)

    server = gevent.server.StreamServer(("127.0.0.1", 0), handle)
    server.start()
    port = server.server_port
    socks = []
    for _ in range(conns):
        s = gevent.socket.create_connection(("127.0.0.1", port))
        s.setsockopt(gevent.socket.IPPROTO_TCP, gevent.socket.TCP_NODELAY, 1)
        socks.append(s)
    gevent.sleep(0.01)  # let the acceptor take every pending connection

    def client(s):
        msg = bytearray(MESSAGE)
        for i in range(trips):
            msg[0] = i & 0xFF
            s.sendall(msg)
            back = recv_exact(s, MESSAGE)
            assert back is not None and back[0] == i & 0xFF
        s.close()

    start = time.perf_counter()
    gevent.joinall([gevent.spawn(client, s) for s in socks], raise_error=True)
    secs = time.perf_counter() - start
    server.stop(timeout=10)
    return {"secs": secs, "ops": conns * trips}


def scaling_conn(conns, trips):
    ports = [int(p) for p in os.environ["EVG_ECHO_PORTS"].split(",")]
    before = status_kib("VmRSS:")
    socks = []
    for i in range(conns):
        s = gevent.socket.create_connection(("127.0.0.1", ports[i % len(ports)]))
        s.setsockopt(gevent.socket.IPPROTO_TCP, gevent.socket.TCP_NODELAY, 1)
        socks.append(s)

    def client(s):
        msg = bytearray(MESSAGE)
        for i in range(trips):
            msg[0] = i & 0xFF
            s.sendall(msg)
            back = recv_exact(s, MESSAGE)
            assert back is not None and back[0] == i & 0xFF
        s.close()

    start = time.perf_counter()
    gs = [gevent.spawn(client, s) for s in socks]
    del socks
    gevent.joinall(gs, raise_error=True)
    secs = time.perf_counter() - start
    growth = max(0, status_kib("VmHWM:") - before) * 1024
    return {"secs": secs, "ops": conns * trips, "bytes_per_task": growth / conns}


def main(argv):
    if len(argv) < 2:
        sys.exit("usage: workloads.py <workload> <a> [<b>]")
    name, args = argv[1], [int(x) for x in argv[2:]]
    table = {
        "spawn_join": spawn_join,
        "yield": yield_,
        "queue_ping_pong": queue_ping_pong,
        "one_way_throughput": one_way_throughput,
        "timers": sleepers,
        "scaling": sleepers,
        "parked_memory": parked_memory,
        "tcp_echo": tcp_echo,
        "scaling_conn": scaling_conn,
    }
    if name not in table:
        sys.exit("unknown workload %r; known: %s" % (name, ", ".join(sorted(table))))
    fn = table[name]
    # The one-size workloads get `<n> 0` like the Rust children: drop the unused size.
    if name not in ("timers", "scaling", "tcp_echo", "scaling_conn"):
        args = args[:1]
    # Warm-up at a tenth of the size (imports, first allocations), like the Rust children.
    if name in ("spawn_join", "yield", "queue_ping_pong", "one_way_throughput"):
        fn(max(1, args[0] // 10))
    result = fn(*args)
    result["note"] = "gevent %s, Python %s" % (gevent.__version__, sys.version.split()[0])
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv)
