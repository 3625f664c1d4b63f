#!/usr/bin/env python3
"""loadtool.py: fault and load scenarios against the real gptd binary on loopback (issue 9).

Each scenario starts its own `gptd serve` on an ephemeral 127.0.0.1 port with the tiny model,
drives it with raw sockets (so a client can stop reading, stall mid-header or vanish at an exact
event), checks the server's own /metrics and /proc figures, stops the server by its PID and
exits non-zero on any broken promise. Request counts and durations are bounded by arguments.

  loadtool.py GPTD MODEL_DIR overload
  loadtool.py GPTD MODEL_DIR storm [--requests 2000] [--concurrency 64]
  loadtool.py GPTD MODEL_DIR slowloris [--connections 300]
  loadtool.py GPTD MODEL_DIR shutdown
  loadtool.py GPTD MODEL_DIR soak [--seconds 120]
  loadtool.py GPTD MODEL_DIR slowclients [--connections 1000] [--seconds 12]

Python standard library only.
"""
import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

HOST = "127.0.0.1"
# Under AddressSanitizer freed memory sits in quarantine, so RSS says nothing about leaks there
# (LeakSanitizer does, at exit, through the exit code); quickstart.sh sets this for that build.
SANITIZED = bool(os.environ.get("GPTD_SANITIZER"))


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


# ---- the server under test ------------------------------------------------------------------

class Server:
    def __init__(self, gptd, model, *flags):
        self.log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                     "gptd-load-%d.log" % os.getpid()), "w+")
        self.proc = subprocess.Popen(
            [gptd, "serve", "-m", model, "--port", "0", "--access-log", "false", *flags],
            stdout=subprocess.DEVNULL, stderr=self.log)
        self.port = None
        deadline = time.time() + 30
        while time.time() < deadline and self.port is None:
            self.log.seek(0)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", self.log.read())
            if m:
                self.port = int(m.group(1))
            else:
                time.sleep(0.05)
        check(self.port is not None, "server did not report its port")
        while time.time() < deadline:
            try:
                if http(self.port, "GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise Failure("server never became healthy")

    def metrics(self):
        status, body = http(self.port, "GET", "/metrics")
        check(status == 200, "/metrics answered %d" % status)
        out = {}
        for line in body.decode().splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, _, value = line.rpartition(" ")
            if "{" not in name:
                out[name] = float(value)
        return out

    def proc_status(self):
        fields = {}
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        rss_kib = int(fields["VmRSS"].split()[0])
        threads = int(fields["Threads"])
        fds = len(os.listdir("/proc/%d/fd" % self.proc.pid))
        return rss_kib, threads, fds

    def wait_idle(self, timeout=2.0):
        """Waits until nothing runs, nothing waits and the KV pool is full again."""
        deadline = time.time() + timeout
        while True:
            m = self.metrics()
            if (m.get("gptd_requests_running", 1) == 0 and m.get("gptd_requests_waiting", 1) == 0
                    and m.get("gptd_kv_blocks_used", 1) == 0):
                return m
            if time.time() > deadline:
                raise Failure("not idle within %.1f s: running %s, waiting %s, kv used %s" % (
                    timeout, m.get("gptd_requests_running"), m.get("gptd_requests_waiting"),
                    m.get("gptd_kv_blocks_used")))
            time.sleep(0.05)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise Failure("server did not exit within %d s of signal %d" % (timeout, sig))
        return self.proc.returncode


# ---- clients ----------------------------------------------------------------------------------

def http(port, method, path, body=None, timeout=10.0, source=None):
    """One request on a fresh connection (from address source, default any); returns (status,
    body bytes)."""
    s = socket.create_connection((HOST, port), timeout=timeout,
                                 source_address=(source, 0) if source else None)
    try:
        data = body.encode() if isinstance(body, str) else (body or b"")
        head = "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" % (method, path)
        if body is not None:
            head += "Content-Type: application/json\r\nContent-Length: %d\r\n" % len(data)
        s.sendall(head.encode() + b"\r\n" + data)
        chunks = []
        while True:
            c = s.recv(65536)
            if not c:
                break
            chunks.append(c)
        raw = b"".join(chunks)
        status = int(raw.split(b" ", 2)[1])
        head, _, payload = raw.partition(b"\r\n\r\n")
        if b"transfer-encoding: chunked" in head.lower():
            payload = dechunk(payload)
        return status, payload
    finally:
        s.close()


def dechunk(data):
    out, pos = [], 0
    while pos < len(data):
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            break
        size = int(data[pos:eol].split(b";")[0], 16)
        if size == 0:
            break
        out.append(data[eol + 2:eol + 2 + size])
        pos = eol + 2 + size + 2
    return b"".join(out)


class Stream:
    """A streaming completion read event by event from a raw socket."""

    def __init__(self, port, body, timeout=60.0):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        data = json.dumps(body).encode()
        self.sock.sendall((
            "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(data)).encode()
            + data)
        self.buf = b""
        self.status = None
        self.headers = b""
        self.chunked = False
        self.raw = b""  # body bytes not yet de-chunked

    def _fill(self):
        c = self.sock.recv(65536)
        if not c:
            return False
        self.buf += c
        return True

    def read_head(self):
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise Failure("connection closed before the response head")
        self.headers, _, rest = self.buf.partition(b"\r\n\r\n")
        self.status = int(self.headers.split(b" ", 2)[1])
        self.chunked = b"transfer-encoding: chunked" in self.headers.lower()
        self.buf = rest
        return self.status

    def events(self):
        """Yields each SSE data payload (str) as it arrives; ends at the end of the body."""
        pending = b""
        ended = False
        while True:
            # De-chunk what we have.
            if self.chunked:
                while True:
                    eol = self.buf.find(b"\r\n")
                    if eol < 0:
                        break
                    size = int(self.buf[:eol].split(b";")[0], 16)
                    if size == 0:
                        ended = True  # the last chunk: deliver what came before it, then stop
                        break
                    if len(self.buf) < eol + 2 + size + 2:
                        break
                    pending += self.buf[eol + 2:eol + 2 + size]
                    self.buf = self.buf[eol + 2 + size + 2:]
            else:
                pending += self.buf
                self.buf = b""
            while b"\n\n" in pending:
                event, _, pending = pending.partition(b"\n\n")
                for line in event.split(b"\n"):
                    if line.startswith(b"data:"):
                        yield line[5:].strip().decode()
            if ended or not self._fill():
                return

    def close(self):
        self.sock.close()


def completion_body(max_tokens=16, stream=True, prompt="Hello world", **extra):
    body = {"prompt": prompt, "max_tokens": max_tokens, "stream": stream, "ignore_eos": True,
            "temperature": 0.8}
    body.update(extra)
    return body


def run_stream(port, body):
    """Runs one stream to its end; returns (status, finish_seen, done_seen, error_seen)."""
    s = Stream(port, body)
    try:
        status = s.read_head()
        if status != 200:
            return status, False, False, False
        finish = done = error = False
        for data in s.events():
            if data == "[DONE]":
                done = True
                continue
            obj = json.loads(data)
            if "error" in obj:
                error = True
            for ch in obj.get("choices", []):
                if ch.get("finish_reason"):
                    finish = True
        return status, finish, done, error
    finally:
        s.close()


# ---- scenarios ----------------------------------------------------------------------------------

def scenario_overload(args):
    """More streams than running + queue capacity: exactly the excess gets 503 + Retry-After,
    fast; the accepted ones complete; /health stays fast."""
    srv = Server(args.gptd, args.model, "--max-batch", "2", "--max-queue", "2")
    try:
        results = [None] * 8
        lock = threading.Lock()

        def one(i):
            s = Stream(srv.port, completion_body(max_tokens=400))
            t0 = time.time()
            status = s.read_head()
            dt = time.time() - t0
            if status != 200:
                s.close()
                with lock:
                    results[i] = (status, dt, s.headers, None)
                return
            finish = done = False
            for data in s.events():
                if data == "[DONE]":
                    done = True
                elif '"finish_reason":"' in data.replace(" ", ""):
                    finish = True
            s.close()
            with lock:
                results[i] = (status, dt, s.headers, finish and done)

        # Two streams first, and the other six once both run: arrivals that raced the engine's
        # admission would find the first two still in the queue (a slow build saw 3 accepted).
        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads[:2]:
            t.start()
        deadline = time.time() + 10
        while srv.metrics().get("gptd_requests_running", 0) < 2 and time.time() < deadline:
            time.sleep(0.005)
        for t in threads[2:]:
            t.start()
        health = []
        while any(t.is_alive() for t in threads):
            t0 = time.time()
            health.append((http(srv.port, "GET", "/health")[0], time.time() - t0))
            time.sleep(0.05)
        for t in threads:
            t.join()
        accepted = [r for r in results if r[0] == 200]
        rejected = [r for r in results if r[0] != 200]
        check(len(accepted) == 4, "accepted %d of 8 (want 2 running + 2 queued)" % len(accepted))
        for status, dt, headers, _ in rejected:
            check(status == 503, "rejection status %d" % status)
            check(b"retry-after:" in headers.lower(), "503 without Retry-After")
            check(dt < 0.5, "503 took %.3f s" % dt)
        check(all(r[3] for r in accepted), "an accepted stream did not finish with [DONE]")
        check(all(h[0] == 200 for h in health), "/health was not 200 throughout")
        check(max(h[1] for h in health) < 0.5, "/health took %.3f s" % max(h[1] for h in health))
        srv.wait_idle()
        print("overload: 4 accepted and completed, 4 x 503 in <= %.0f ms, /health max %.0f ms" % (
            1000 * max(r[1] for r in rejected), 1000 * max(h[1] for h in health)))
    finally:
        check(srv.stop() == 0, "server exit code not 0")
    # A queued stream gets its 200 and SSE headers only once admitted (so that a queue timeout
    # can still be a real 503): with one running sequence, the second stream's headers cannot
    # arrive before the first stream has finished.
    srv = Server(args.gptd, args.model, "--max-batch", "1")
    try:
        times = {}

        def timed(name, max_tokens):
            s = Stream(srv.port, completion_body(max_tokens=max_tokens))
            status = s.read_head()
            times[name + "_head"] = time.time()
            for data in s.events():
                pass
            times[name + "_end"] = time.time()
            s.close()
            times[name + "_status"] = status

        first = threading.Thread(target=timed, args=("first", 300))
        first.start()
        time.sleep(0.05)
        second = threading.Thread(target=timed, args=("second", 8))
        second.start()
        first.join()
        second.join()
        check(times["first_status"] == 200 and times["second_status"] == 200, "statuses")
        check(times["second_head"] >= times["first_end"] - 0.05,
              "the queued stream's headers came %.3f s before the running one ended" % (
                  times["first_end"] - times["second_head"]))
        print("admission: the queued stream's headers came %.0f ms after the running one ended" %
              (1000 * (times["second_head"] - times["first_end"])))
    finally:
        check(srv.stop() == 0, "server exit code not 0")


def scenario_storm(args):
    """Many streams each dropped after 0-20 events (some while queued): afterwards nothing
    runs, the KV pool is full within 2 s, and RSS is back near its baseline."""
    srv = Server(args.gptd, args.model, "--max-batch", "16")
    try:
        rng = random.Random(1)
        lock = threading.Lock()
        counter = {"next": 0, "dropped": 0, "total": 0}

        def worker():
            while True:
                with lock:
                    i = counter["next"]
                    if i >= counter["total"]:
                        return
                    counter["next"] += 1
                    k = rng.randint(0, 20)
                    long_prompt = rng.random() < 0.2
                prompt = "word " * (300 if long_prompt else 5)
                try:
                    s = Stream(srv.port, completion_body(max_tokens=100, prompt=prompt))
                    if k > 0 and s.read_head() == 200:
                        for n, _ in enumerate(s.events()):
                            if n + 1 >= k:
                                break
                    s.close()
                    with lock:
                        counter["dropped"] += 1
                except OSError:
                    pass

        def storm(n):
            counter.update(next=0, dropped=0, total=n)
            threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        # Warm-up at the same concurrency, so the baseline includes the allocator's steady
        # state at that load (glibc keeps freed memory in per-thread arenas).
        storm(max(100, args.requests // 4))
        srv.wait_idle()
        time.sleep(0.5)
        rss0, threads0, fds0 = srv.proc_status()
        counter["total"] = args.requests
        t0 = time.time()
        storm(args.requests)
        t_last = time.time()
        m = srv.wait_idle(timeout=2.0)
        idle_after = time.time() - t_last
        time.sleep(0.5)
        rss1, threads1, fds1 = srv.proc_status()
        check(SANITIZED or rss1 - rss0 <= 16 * 1024,
              "RSS grew %d KiB (%d -> %d)" % (rss1 - rss0, rss0, rss1))
        check(abs(threads1 - threads0) <= 2, "threads %d -> %d" % (threads0, threads1))
        check(abs(fds1 - fds0) <= 2, "fds %d -> %d" % (fds0, fds1))
        check(m["gptd_requests_cancelled_total"] > 0, "no cancellation was counted")
        print("storm: %d streams dropped in %.1f s; idle %.2f s after the last close; "
              "RSS %+d KiB, threads %d -> %d, fds %d -> %d, cancelled %d" % (
                  counter["dropped"], t_last - t0, idle_after, rss1 - rss0, threads0, threads1,
                  fds0, fds1, m["gptd_requests_cancelled_total"]))
    finally:
        check(srv.stop() == 0, "server exit code not 0")


def scenario_slowloris(args):
    """Hundreds of connections sending partial headers while normal streams run: normal latency
    barely moves, and the stalled connections are closed at the idle timeout."""
    timeout_s = 3
    srv = Server(args.gptd, args.model, "--connection-timeout", str(timeout_s))
    socks = []
    try:
        def latency(n=10):
            out = []
            for _ in range(n):
                t0 = time.time()
                status, *_ = run_stream(srv.port, completion_body(max_tokens=16))
                check(status == 200, "normal request got %d" % status)
                out.append(time.time() - t0)
            out.sort()
            return out[len(out) // 2]

        base = latency()
        t_open = time.time()
        for _ in range(args.connections):
            s = socket.create_connection((HOST, srv.port), timeout=10)
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            socks.append(s)
        loaded = latency()
        # Every stalled connection must be closed by the server around the idle timeout.
        closed = 0
        deadline = t_open + timeout_s + 5
        for s in socks:
            try:
                while True:  # the server may answer (408) before it closes
                    s.settimeout(max(0.1, deadline - time.time()))
                    if s.recv(1024) == b"":
                        closed += 1
                        break
            except socket.timeout:
                pass
            except OSError:
                closed += 1
        t_closed = time.time() - t_open
        check(closed == len(socks), "%d of %d stalled connections still open after %.1f s" % (
            len(socks) - closed, len(socks), t_closed))
        check(loaded <= max(2.5 * base, base + 0.05),
              "normal latency p50 %.1f ms -> %.1f ms under slowloris" % (1000 * base, 1000 * loaded))
        print("slowloris: %d stalled connections; normal p50 %.1f ms -> %.1f ms; all closed by "
              "%.1f s (idle timeout %d s)" % (len(socks), 1000 * base, 1000 * loaded, t_closed,
                                              timeout_s))
    finally:
        for s in socks:
            s.close()
        check(srv.stop() == 0, "server exit code not 0")


def scenario_shutdown(args):
    """SIGTERM with streams in flight: every stream ends with a finish reason and [DONE]; with a
    short drain timeout the running one that cannot finish gets an error event and [DONE], the
    ones still queued (never admitted, so no headers sent yet) get a 503; exit code 0."""
    # The second case runs one sequence at a time with 48 x 480 tokens of work: several seconds
    # even for the tiny model on a fast machine, so the 1 s drain must cut it short.
    for drain, n_streams, max_tokens, want_error in (("30", 8, 200, False),
                                                    ("1", 48, 480, True)):
        srv = Server(args.gptd, args.model, "--drain-timeout", drain,
                     *(("--max-batch", "1") if want_error else ()))
        results = []
        lock = threading.Lock()

        def one():
            r = run_stream(srv.port, completion_body(max_tokens=max_tokens, prompt="x"))
            with lock:
                results.append(r)

        threads = [threading.Thread(target=one) for _ in range(n_streams)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        t0 = time.time()
        code = srv.stop(timeout=int(drain) + 10)
        dt = time.time() - t0
        for t in threads:
            t.join()
        check(code == 0, "exit code %d after SIGTERM" % code)
        check(len(results) == n_streams, "lost streams")
        n_err = n_503 = 0
        for status, finish, done, error in results:
            if want_error and status == 503:
                n_503 += 1
                continue
            check(status == 200, "stream status %d" % status)
            check(done, "a stream ended without [DONE]")
            check(finish or (want_error and error), "a stream ended with no finish and no error")
            n_err += 1 if error else 0
        check(n_err > 0 or not want_error,
              "no running stream outlived the 1 s drain: nothing tested")
        check(dt < int(drain) + 5, "exit took %.1f s" % dt)
        print("shutdown (drain %s s): %d streams, %d ended by error event, %d queued got 503, "
              "exit 0 in %.2f s" % (drain, n_streams, n_err, n_503, dt))


def scenario_soak(args):
    """Mixed traffic for a while (normal streams, 10% disconnects, 5% bad requests), then: no
    unexpected status, RSS within +2% (or +16 MiB) of its post-warm-up value, threads and fds
    back to baseline, KV pool full, started == completed + cancelled + rejected + failed."""
    srv = Server(args.gptd, args.model, "--max-batch", "16")
    bad_bodies = ['{"prompt": "hi",', '[1,2]', '{"prompt":"a","max_tokens":-1}',
                  '{"prompt":"a","temperature":5}', '{"prompt":""}', '{"prompt":[99999999]}',
                  '{"prompt":"a","stop":[""]}', '{"prompt":"a","n":0}']
    try:
        rng = random.Random(7)
        lock = threading.Lock()
        stats = {"ok": 0, "dropped": 0, "bad": 0, "unexpected": []}
        stop_at = [time.time() + 15]  # warm-up phase first

        def worker(seed):
            r = random.Random(seed)
            while time.time() < stop_at[0]:
                x = r.random()
                try:
                    if x < 0.05:
                        status, _ = http(srv.port, "POST", "/v1/completions",
                                         r.choice(bad_bodies))
                        key = "bad" if status == 400 else None
                    elif x < 0.15:
                        s = Stream(srv.port, completion_body(max_tokens=64))
                        if s.read_head() == 200:
                            for n, _ in enumerate(s.events()):
                                if n >= r.randint(0, 10):
                                    break
                        s.close()
                        key = "dropped"
                    else:
                        status, finish, done, error = run_stream(
                            srv.port, completion_body(max_tokens=r.randint(4, 48),
                                                      stream=True))
                        key = "ok" if status == 200 and finish and done and not error else None
                    with lock:
                        if key is None:
                            stats["unexpected"].append(x)
                        else:
                            stats[key] += 1
                except OSError as e:
                    with lock:
                        stats["unexpected"].append(str(e))

        def run_phase(seconds, n_workers):
            stop_at[0] = time.time() + seconds
            threads = [threading.Thread(target=worker, args=(rng.random(),))
                       for _ in range(n_workers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        srv.wait_idle()
        threads0, fds0 = srv.proc_status()[1:]
        run_phase(10, 8)  # warm-up
        srv.wait_idle()
        rss_warm = srv.proc_status()[0]
        run_phase(args.seconds, 8)
        m = srv.wait_idle(timeout=2.0)
        time.sleep(0.5)
        rss1, threads1, fds1 = srv.proc_status()
        check(not stats["unexpected"], "unexpected outcomes: %s" % stats["unexpected"][:5])
        limit = max(rss_warm * 0.02, 16 * 1024)
        check(SANITIZED or rss1 - rss_warm <= limit, "RSS %d -> %d KiB" % (rss_warm, rss1))
        check(abs(threads1 - threads0) <= 2, "threads %d -> %d" % (threads0, threads1))
        check(abs(fds1 - fds0) <= 2, "fds %d -> %d" % (fds0, fds1))
        started = m["gptd_requests_started_total"]
        ended = (m["gptd_requests_completed_total"] + m["gptd_requests_cancelled_total"] +
                 m["gptd_requests_rejected_total"] + m["gptd_requests_failed_total"])
        check(started == ended, "started %d != completed+cancelled+rejected+failed %d" % (
            started, ended))
        print("soak %d s: %d ok, %d dropped, %d bad requests answered 400; RSS %d -> %d KiB; "
              "threads %d -> %d; fds %d -> %d; started %d == ended %d" % (
                  args.seconds, stats["ok"], stats["dropped"], stats["bad"], rss_warm, rss1,
                  threads0, threads1, fds0, fds1, started, ended))
    finally:
        check(srv.stop() == 0, "server exit code not 0")

def raise_fd_limit():
    """The attack tools open a thousand sockets each: lift this process's (and so their) soft
    descriptor limit to the hard one, as gptd does for itself."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def scenario_slowclients(args):
    """Issue 21: one address attacks a server with its default limits, with Debian's
    slowhttptest in its slow-headers, slow-body and slow-read modes and a wrk flood well above
    the per-client limit. During each attack a well-behaved client on another address
    (127.0.0.2) gets /health and a 16-token completion, every one 200 with p99 under 1 s, and
    the admin listener's /livez answers; the deadlines and limits show in /metrics; afterwards
    connections, fds, threads and RSS are back at their baseline."""
    import shutil
    for tool in ("slowhttptest", "wrk"):
        check(shutil.which(tool) is not None, "%s is not installed (quickstart.sh test installs "
              "it)" % tool)
    fd_limit = raise_fd_limit()
    check(fd_limit >= args.connections + 64, "descriptor limit %d is below %d connections" % (
        fd_limit, args.connections))
    # Deadlines shortened from 10 s / 30 s so that each attack outlives them within its bounded
    # length; every other limit is the default (512 connections per client address).
    srv = Server(args.gptd, args.model, "--header-timeout", "4", "--body-timeout", "6",
                 "--admin-port", "0")
    srv.log.seek(0)
    m = re.search(r"admin endpoints \(/health, /livez, /metrics\) on http://127\.0\.0\.1:(\d+)",
                  srv.log.read())
    check(m is not None, "no admin port in the log")
    admin_port = int(m.group(1))
    good = "127.0.0.2"
    try:
        def good_client(stop, out):
            """/health, a 16-token completion and the admin /livez, over and over."""
            body = json.dumps(completion_body(max_tokens=16, stream=False))
            while not stop.is_set():
                for what, port, method, path, data in (
                        ("health", srv.port, "GET", "/health", None),
                        ("completion", srv.port, "POST", "/v1/completions", body),
                        ("livez", admin_port, "GET", "/livez", None)):
                    t0 = time.time()
                    try:
                        status, _ = http(port, method, path, data, timeout=5.0, source=good)
                    except (OSError, IndexError, ValueError) as e:  # refused, reset, empty
                        status = "error %r" % e
                    out.append((what, status, time.time() - t0))
                time.sleep(0.1)

        def attack(name, cmd, seconds):
            stop = threading.Event()
            results = []
            tool = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            time.sleep(2.0)  # let the attack build up before measuring
            t = threading.Thread(target=good_client, args=(stop, results))
            t.start()
            try:
                out, _ = tool.communicate(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                tool.kill()
                out, _ = tool.communicate()
                raise Failure("%s did not end by itself" % name)
            finally:
                stop.set()
                t.join()
            bad = [r for r in results if r[1] != 200]
            check(results, "%s: the good client made no request" % name)
            check(not bad, "%s: the good client got %s" % (name, bad[:5]))
            lat = sorted(r[2] for r in results)
            p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
            check(p99 < 1.0, "%s: good client's p99 %.3f s" % (name, p99))
            return len(results), lat[len(lat) // 2], p99, out.decode(errors="replace")

        def settle():
            """Waits until the attack's connections are gone; returns /metrics."""
            deadline = time.time() + 15
            while True:
                m = srv.metrics()
                if m.get("gptd_connections_open", 1) <= 1:  # the /metrics request itself
                    return m
                if time.time() > deadline:
                    raise Failure("%d connections still open" % m["gptd_connections_open"])
                time.sleep(0.2)

        def labelled(name, label):
            status, body = http(srv.port, "GET", "/metrics")
            mm = re.search(r"^%s\{%s\} (\S+)$" % (re.escape(name), label), body.decode(), re.M)
            return float(mm.group(1)) if mm else 0.0

        # A kept-alive client idle for longer than the header deadline (4 s here) between two
        # requests is not cut: an idle kept-alive connection has the idle timeout (30 s).
        ka = socket.create_connection((HOST, srv.port), timeout=5, source_address=(good, 0))
        try:
            for i in range(2):
                ka.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                got = b""
                while b"\r\n\r\n" not in got or not got.rstrip().endswith(b"}"):
                    c = ka.recv(4096)
                    check(c, "kept-alive connection closed before answer %d" % (i + 1))
                    got += c
                check(got.startswith(b"HTTP/1.1 200"), "kept-alive answer %d: %r" % (i + 1, got[:40]))
                if i == 0:
                    time.sleep(5.0)
        finally:
            ka.close()
        # Baseline after one round of the good client and a short flood, so the allocator and
        # the thread pool are in their steady state.
        http(srv.port, "POST", "/v1/completions", json.dumps(completion_body(stream=False)))
        srv.wait_idle()
        settle()
        rss0, threads0, fds0 = srv.proc_status()
        url = "http://%s:%d" % (HOST, srv.port)
        n, secs = str(args.connections), str(args.seconds)
        attacks = [
            # slow headers: a header line every 3 s never completes the request
            ("slow headers", ["slowhttptest", "-H", "-c", n, "-r", "500", "-i", "3", "-x", "24",
                              "-l", secs, "-p", "2", "-u", url + "/health"]),
            # slow body: a POST announcing 100 KB that trickles in
            ("slow body", ["slowhttptest", "-B", "-c", n, "-r", "500", "-i", "3", "-s", "100000",
                           "-x", "24", "-t", "POST", "-l", secs, "-p", "2",
                           "-u", url + "/v1/completions"]),
            # slow read: pipelined requests for /metrics read through a tiny window
            ("slow read", ["slowhttptest", "-X", "-c", n, "-r", "500", "-w", "16", "-y", "32",
                           "-n", "3", "-z", "32", "-k", "3", "-l", secs, "-p", "2",
                           "-u", url + "/metrics"]),
            # flood: twice the per-client limit of keep-alive connections hammering /health
            ("flood", ["wrk", "-t", "1", "-c", n, "-d", secs + "s", url + "/health"]),
        ]
        report = []
        for name, cmd in attacks:
            n_req, p50, p99, out = attack(name, cmd, args.seconds)
            m = settle()
            report.append("%s: good client %d requests, p50 %.0f ms, p99 %.0f ms" % (
                name, n_req, 1000 * p50, 1000 * p99))
            if name == "slow headers":
                check(labelled("gptd_connections_timed_out_total", 'phase="headers"') > 0,
                      "slow headers: no connection closed at the header deadline")
            elif name == "slow body":
                check(labelled("gptd_connections_timed_out_total", 'phase="body"') > 0,
                      "slow body: no connection closed at the body deadline")
        rejected = labelled("gptd_connections_rejected_total", 'reason="per_client_limit"')
        check(rejected > 0, "no connection was refused at the per-client limit")
        time.sleep(0.5)
        rss1, threads1, fds1 = srv.proc_status()
        check(SANITIZED or rss1 - rss0 <= 32 * 1024, "RSS grew %d KiB (%d -> %d)" % (
            rss1 - rss0, rss0, rss1))
        check(abs(threads1 - threads0) <= 2, "threads %d -> %d" % (threads0, threads1))
        check(abs(fds1 - fds0) <= 2, "fds %d -> %d" % (fds0, fds1))
        print("slowclients (%d connections per attack, %s s each): %s; %d refused at the "
              "per-client limit; RSS %+d KiB, threads %d -> %d, fds %d -> %d" % (
                  args.connections, secs, "; ".join(report), rejected, rss1 - rss0, threads0,
                  threads1, fds0, fds1))
    finally:
        check(srv.stop() == 0, "server exit code not 0")
    slowclients_global_limit(args)


def slowclients_global_limit(args):
    """The global limit: with --connection-limit 32, 40 idle sockets from two addresses get 32
    in and 8 refused at accept (counted); the admin listener answers while the table is full;
    once the sockets close, the main port answers again."""
    srv = Server(args.gptd, args.model, "--connection-limit", "32", "--admin-port", "0")
    srv.log.seek(0)
    admin_port = int(re.search(r"admin endpoints .* on http://127\.0\.0\.1:(\d+)",
                               srv.log.read()).group(1))
    socks = []
    try:
        for i in range(40):
            s = socket.create_connection((HOST, srv.port), timeout=5,
                                         source_address=("127.0.0.%d" % (2 + i % 2), 0))
            socks.append(s)
        time.sleep(0.5)  # refused ones are closed by the server: recv sees the end at once
        refused = 0
        for s in socks:
            s.settimeout(0.05)
            try:
                if s.recv(1) == b"":
                    refused += 1
            except socket.timeout:
                pass
            except OSError:
                refused += 1
        status, body = http(admin_port, "GET", "/metrics")
        check(status == 200, "admin /metrics answered %d with the table full" % status)
        mm = re.search(r'^gptd_connections_rejected_total\{reason="connection_limit"\} (\S+)$',
                       body.decode(), re.M)
        check(refused == 8 and mm is not None and float(mm.group(1)) == 8,
              "40 sockets at a limit of 32: %d closed, %s counted" % (
                  refused, mm.group(1) if mm else "none"))
        check(http(admin_port, "GET", "/livez")[0] == 200, "admin /livez with the table full")
        for s in socks:
            s.close()
        socks = []
        deadline = time.time() + 5
        while True:
            try:
                if http(srv.port, "GET", "/health")[0] == 200:
                    break
            except (OSError, IndexError):
                pass
            check(time.time() < deadline, "the main port did not answer after the sockets closed")
            time.sleep(0.1)
        print("global limit: 40 sockets at --connection-limit 32: 8 refused and counted; the "
              "admin listener answered meanwhile")
    finally:
        for s in socks:
            s.close()
        check(srv.stop() == 0, "server exit code not 0")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gptd")
    ap.add_argument("model")
    ap.add_argument("scenario", choices=["overload", "storm", "slowloris", "shutdown", "soak",
                                         "slowclients"])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--connections", type=int, default=300)
    ap.add_argument("--seconds", type=int, default=None)
    args = ap.parse_args()
    if args.seconds is None:
        args.seconds = 12 if args.scenario == "slowclients" else 120
    if os.environ.get("GPTD_SOAK_SECONDS"):
        args.seconds = int(os.environ["GPTD_SOAK_SECONDS"])
    try:
        globals()["scenario_" + args.scenario](args)
    except Failure as e:
        print("FAIL %s: %s" % (args.scenario, e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
