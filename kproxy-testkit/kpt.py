#!/usr/bin/env python3
"""Servers and probes for kproxy's kernel tests; runs inside network namespaces.

serve --name NAME [--addr IP] [--tcp PORT]... [--udp PORT]...
    Answers every TCP connection and UDP datagram with "NAME PEER_IP".
    Prints "ready" once listening.
probe --src IP --dst IP --port N --proto tcp|udp [--count N] [--timeout S]
    Prints one line per attempt: "ok NAME PEER_IP", "refused", "timeout",
    "unreachable" or "error MESSAGE".
hold --src IP --dst IP --port N --seconds S
    Keeps one TCP connection open for S seconds, echoing a ping every 50 ms;
    prints "held N" or "broken after T: ERROR" (exit 1).
watch --src IP --dst IP --port N --seconds S [--interval S]
    Opens a new TCP connection every 50 ms (or INTERVAL) for S seconds;
    prints "ok N failed F" and the first failure, if any.
follow --src IP --dst IP --port N --seconds S [--show-failures]
    Connects over TCP every 2 ms for S seconds and prints "WALLTIME NAME"
    whenever the answering pod changes (the first answer included), for
    measuring when a change reached the dataplane. With --show-failures,
    a change to connections failing (200 ms timeout) prints
    "WALLTIME - WHY" (timeout, or the error's name such as ECONNREFUSED
    or EADDRINUSE).
reach --src IP --targets IP:PORT,... --seconds S
    Tries every target over TCP (100 ms timeout) in rounds until each has
    answered once; prints "WALLTIME all N" then, or "timeout K of N".
bench --src IP --dst IP --port N --udp-port N [--connections N] [--udp-count N] [--udp-fresh] [--megabytes M]
    Opens N TCP connections one after another (each read its greeting),
    sends N UDP request/replies from one socket (each from a new socket
    with --udp-fresh), and sends M MiB over one TCP connection (after
    "SINK\n", the server counts instead of echoing); prints connections/s,
    connect and UDP p50/p99 (ms), connections that failed (refused or not
    answered within 5 s) and MiB/s as JSON, leaving out any part asked
    for 0 times.
udpstream --src IP --sport N --dst IP --port N --seconds S [--interval S]
    Sends a datagram every 50 ms for S seconds from one socket (one source
    port, so one conntrack entry), or every INTERVAL; prints "T NAME" per answer, "T refused"
    when an ICMP port unreachable came back, or "T timeout", T being
    seconds since the start.
"""
import time
import argparse
import errno
import os
import socket
import sys
import threading


def family_of(ip):
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def sink(conn):
    """Reads until EOF; returns the byte count."""
    buf, total = bytearray(1 << 20), 0
    while True:
        n = conn.recv_into(buf)
        if not n:
            return total
        total += n


def bench(args):
    """Connection rate and time, UDP round trips and bulk TCP throughput
    to DST, as one JSON line; a part asked for 0 times is left out."""
    import json
    fam = family_of(args.dst)

    def pct(xs, p):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(len(xs) * p / 100))] * 1000
    out = {}
    if args.connections:
        # A connection not answered within 5 s, or refused, counts as
        # failed (and is left out of the times) rather than ending the run.
        times = []
        failed = 0
        began = time.monotonic()
        for _ in range(args.connections):
            t = time.monotonic()
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.settimeout(5)
            try:
                s.bind((args.src, 0))
                s.connect((args.dst, args.port))
                s.recv(256)
                times.append(time.monotonic() - t)
            except OSError:
                failed += 1
            finally:
                s.close()
        if not times:
            raise SystemExit("no connection to %s:%d answered" % (args.dst, args.port))
        out.update(connections_per_second=args.connections / (time.monotonic() - began),
                   connect_p50_ms=pct(times, 50), connect_p99_ms=pct(times, 99), connect_failures=failed)
    if args.udp_count:
        # --udp-fresh: every request from a new socket (a new flow, as a
        # resolver sends them), so each one meets the proxy's rules.
        rtts = []
        u = None
        for _ in range(args.udp_count):
            t = time.monotonic()
            if u is None:
                u = socket.socket(fam, socket.SOCK_DGRAM)
                u.settimeout(5)
                u.bind((args.src, 0))
                u.connect((args.dst, args.udp_port))
            u.send(b"ping")
            u.recv(256)
            rtts.append(time.monotonic() - t)
            if args.udp_fresh:
                u.close()
                u = None
        if u is not None:
            u.close()
        out.update(udp_p50_ms=pct(rtts, 50), udp_p99_ms=pct(rtts, 99))
    if args.megabytes:
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(30)
        s.bind((args.src, 0))
        s.connect((args.dst, args.port))
        s.recv(256)
        chunk = b"x" * (1 << 20)
        t = time.monotonic()
        s.sendall(b"SINK\n")
        for _ in range(args.megabytes):
            s.sendall(chunk)
        s.shutdown(socket.SHUT_WR)
        got = int(s.recv(64).split()[0])
        bulk = time.monotonic() - t
        s.close()
        if got != args.megabytes << 20:
            raise SystemExit("the sink got %d bytes of %d" % (got, args.megabytes << 20))
        out.update(tcp_mb_per_second=args.megabytes / bulk)
    print(json.dumps(out), flush=True)


def serve(args):
    socks = []
    # --addr: one address only (several responders share a namespace).
    addrs = [(family_of(args.addr), args.addr)] if args.addr else [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]
    for fam, any_addr in addrs:
        for port in args.tcp:
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((any_addr, port))
            s.listen(64)
            socks.append(("tcp", s))
        for port in args.udp:
            s = socket.socket(fam, socket.SOCK_DGRAM)
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((any_addr, port))
            socks.append(("udp", s))

    def tcp_loop(s):
        while True:
            conn, peer = s.accept()
            threading.Thread(target=tcp_conn, args=(conn, peer), daemon=True).start()

    def tcp_conn(conn, peer):
        # Greet, then echo until the client closes; a client whose first
        # bytes are "SINK\n" sends bulk data instead, and gets the count.
        try:
            conn.sendall(("%s %s\n" % (args.name, peer[0])).encode())
            first = True
            while True:
                data = conn.recv(2048)
                if not data:
                    break
                if first and data.startswith(b"SINK\n"):
                    conn.sendall(b"%d\n" % (len(data) - 5 + sink(conn)))
                    break
                first = False
                conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()

    def udp_loop(s):
        while True:
            _, peer = s.recvfrom(2048)
            s.sendto(("%s %s" % (args.name, peer[0])).encode(), peer)

    for kind, s in socks:
        threading.Thread(target=tcp_loop if kind == "tcp" else udp_loop, args=(s,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def probe_once(args):
    fam = family_of(args.dst)
    kind = socket.SOCK_STREAM if args.proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(fam, kind)
    s.settimeout(args.timeout)
    try:
        s.bind((args.src, 0))
        s.connect((args.dst, args.port))
        if args.proto == "udp":
            s.send(b"hello")
            data = s.recv(2048)
        else:
            data = s.recv(2048)
        return "ok " + data.decode().strip()
    except ConnectionRefusedError:
        return "refused"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "unreachable"
        if e.errno == errno.EPERM:
            # The node's own datagram stopped by a filter rule on its way
            # out: the kernel says EPERM for a DROP and a REJECT alike.
            return "filtered"
        return "error %s" % e
    finally:
        s.close()


def hold(args):
    start = time.monotonic()
    n = 0
    try:
        s = socket.create_connection((args.dst, args.port), timeout=5, source_address=(args.src, 0))
        s.recv(2048)
        while time.monotonic() - start < args.seconds:
            s.sendall(b"ping\n")
            if s.recv(2048) != b"ping\n":
                raise OSError("bad echo")
            n += 1
            time.sleep(0.05)
        print("held %d" % n, flush=True)
    except OSError as e:
        print("broken after %.2f: %s" % (time.monotonic() - start, e), flush=True)
        sys.exit(1)


def watch(args):
    """New TCP connections, one after another, for args.seconds (or until
    the file args.until exists, with args.seconds as a cap): prints
    "ok N failed M [slow K] [first failure]". A failure is a refusal, an
    error, or no answer within a generous 5 s (CI's machines are slow and
    busy); an answer that took over 1 s (a dropped SYN sent again, or a
    starved server) counts as ok and as slow, for the report only."""
    start = time.monotonic()
    ok = failed = slow = 0
    first = ""
    until = getattr(args, "until", None)
    while time.monotonic() - start < args.seconds and not (until and os.path.exists(until)):
        args.proto, args.timeout = "tcp", 5.0
        began = time.monotonic()
        r = probe_once(args)
        if r.startswith("ok"):
            ok += 1
            slow += time.monotonic() - began > 1.0
        else:
            failed += 1
            first = first or ("%.2f %s" % (began - start, r))
        time.sleep(getattr(args, "interval", 0.05))
    slow_part = " slow %d" % slow if slow else ""
    print("ok %d failed %d%s %s" % (ok, failed, slow_part, first), flush=True)


def answer_or_failure(src, dst, port, timeout):
    """The answering pod's name, or "-", why the connection failed and
    from which source port ("- ECONNREFUSED sport=40001")."""
    s = socket.socket(family_of(dst), socket.SOCK_STREAM)
    s.settimeout(timeout)
    sport = "sport=?"
    try:
        s.bind((src, 0))
        sport = "sport=%d" % s.getsockname()[1]
        s.connect((dst, port))
        return s.recv(2048).decode().split()[0]
    except socket.timeout:
        return "- timeout " + sport
    except OSError as e:
        return "- %s %s" % (errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__, sport)
    finally:
        s.close()


def answer(src, dst, port, timeout):
    """The answering pod's name, or None if the connection failed."""
    name = answer_or_failure(src, dst, port, timeout)
    return None if name.startswith("- ") else name


def follow(args):
    """Prints "TIME NAME" at each change of the answer (a pod's name, or
    with --show-failures "- WHY sport=PORT"; a run of failures for the
    same reason is one change, printed with its first source port)."""
    last = None
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        name = answer_or_failure(args.src, args.dst, args.port, 0.2)
        if not args.show_failures and name.startswith("- "):
            name = None
        if name is not None and name.rsplit(" sport=", 1)[0] != last:
            print("%.6f %s" % (time.time(), name), flush=True)
            last = name.rsplit(" sport=", 1)[0]
        time.sleep(0.002)


def reach(args):
    pending = []
    for t in args.targets.split(","):
        host, port = t.rsplit(":", 1)
        pending.append((host.strip("[]"), int(port)))
    total = len(pending)
    end = time.monotonic() + args.seconds
    while pending and time.monotonic() < end:
        pending = [t for t in pending if answer(args.src, t[0], t[1], 0.1) is None]
        if pending:
            time.sleep(0.01)
    if pending:
        print("timeout %d of %d" % (total - len(pending), total), flush=True)
    else:
        print("%.6f all %d" % (time.time(), total), flush=True)


def udpstream(args):
    s = socket.socket(family_of(args.dst), socket.SOCK_DGRAM)
    s.bind((args.src, args.sport))
    s.connect((args.dst, args.port))
    s.settimeout(0.2)
    start = time.monotonic()
    while time.monotonic() - start < args.seconds:
        t = time.monotonic() - start
        try:
            s.send(b"hello")
            name = s.recv(2048).decode().split()[0]
        except socket.timeout:
            name = "timeout"
        except ConnectionRefusedError:
            name = "refused"
        print("%.3f %s" % (t, name), flush=True)
        time.sleep(args.interval)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--name", required=True)
    s.add_argument("--addr", default=None)
    s.add_argument("--tcp", type=int, action="append", default=[])
    s.add_argument("--udp", type=int, action="append", default=[])
    q = sub.add_parser("probe")
    q.add_argument("--src", required=True)
    q.add_argument("--dst", required=True)
    q.add_argument("--port", type=int, required=True)
    q.add_argument("--proto", choices=["tcp", "udp"], default="tcp")
    q.add_argument("--count", type=int, default=1)
    q.add_argument("--timeout", type=float, default=1.0)
    for name in ("hold", "watch"):
        h = sub.add_parser(name)
        h.add_argument("--src", required=True)
        h.add_argument("--dst", required=True)
        h.add_argument("--port", type=int, required=True)
        h.add_argument("--seconds", type=float, required=True)
        h.add_argument("--interval", type=float, default=0.05)
        if name == "watch":
            h.add_argument("--until", default=None, help="stop once this file exists")
    f = sub.add_parser("follow")
    f.add_argument("--src", required=True)
    f.add_argument("--dst", required=True)
    f.add_argument("--port", type=int, required=True)
    f.add_argument("--seconds", type=float, required=True)
    f.add_argument("--show-failures", action="store_true")
    r = sub.add_parser("reach")
    r.add_argument("--src", required=True)
    r.add_argument("--targets", required=True)
    r.add_argument("--seconds", type=float, required=True)
    b = sub.add_parser("bench")
    b.add_argument("--src", required=True)
    b.add_argument("--dst", required=True)
    b.add_argument("--port", type=int, required=True)
    b.add_argument("--udp-port", type=int, required=True)
    b.add_argument("--connections", type=int, default=2000)
    b.add_argument("--udp-count", type=int, default=2000)
    b.add_argument("--megabytes", type=int, default=1000)
    b.add_argument("--udp-fresh", action="store_true")
    u = sub.add_parser("udpstream")
    u.add_argument("--src", required=True)
    u.add_argument("--sport", type=int, required=True)
    u.add_argument("--dst", required=True)
    u.add_argument("--port", type=int, required=True)
    u.add_argument("--seconds", type=float, required=True)
    u.add_argument("--interval", type=float, default=0.05)
    args = p.parse_args()
    if args.cmd == "serve":
        serve(args)
    elif args.cmd == "hold":
        hold(args)
    elif args.cmd == "watch":
        watch(args)
    elif args.cmd == "follow":
        follow(args)
    elif args.cmd == "reach":
        reach(args)
    elif args.cmd == "bench":
        bench(args)
    elif args.cmd == "udpstream":
        udpstream(args)
    else:
        for _ in range(args.count):
            print(probe_once(args), flush=True)


if __name__ == "__main__":
    main()
