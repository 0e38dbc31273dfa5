# The code-verdict harness (src/tasks/judge.rs): the tests judge, not the exit status.
#
# argv: _judge.py ENTRY. Files in the working directory: trusted.py (the dataset's
# prompt: helpers the tests may call), candidate.py (the program with the model's
# code), test.py (defines check(candidate)). fd 0: the run's token, from the engine;
# fd 3: the report channel back to it.
#
# The candidate runs in a forked worker process; this process (the judge) runs the
# tests and calls the candidate through a pipe. Arguments and results cross it as
# marshal data and must be plain (numbers, strings, bytes, None, and lists, tuples,
# dicts, sets of those, exact types), so an object that compares equal to anything
# cannot reach the tests, and the candidate cannot touch the judge's check, builtins
# or modules. Only after check returns does the judge read the token (which the worker
# never had: fd 0 is closed in it before its code runs) and write "TOKEN passed" to
# fd 3; any other ending writes another verdict, or nothing (the engine then decides
# from how the process ended).
import builtins, marshal, os, struct, sys, traceback

_fork, _waitpid, _exit, _read, _write, _close, _pipe = (
    os.fork, os.waitpid, os._exit, os.read, os.write, os.close, os.pipe)
REPORT = 3
ENTRY = sys.argv[1]
PLAIN = (int, float, complex, bool, str, bytes, type(None))
SEQ = (list, tuple, set, frozenset)


def plain(v, depth=0):
    t = type(v)
    if t in PLAIN:
        return True
    if depth > 64:
        return False
    if t in SEQ:
        return all(plain(x, depth + 1) for x in v)
    if t is dict:
        return all(plain(k, depth + 1) and plain(x, depth + 1) for k, x in v.items())
    return False


def send(fd, obj):
    data = marshal.dumps(obj)
    _write(fd, struct.pack("<Q", len(data)) + data)


def recv(fd):
    head = b""
    while len(head) < 8:
        chunk = _read(fd, 8 - len(head))
        if not chunk:
            return None
        head += chunk
    (n,) = struct.unpack("<Q", head)
    parts, got = [], 0
    while got < n:
        chunk = _read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        got += len(chunk)
    return marshal.loads(b"".join(parts))


def verdict(name, detail=""):
    token = _read(0, 256).decode("ascii", "replace").strip()
    detail = detail.replace("\n", " ")[:500]
    _write(REPORT, ("%s %s %s\n" % (token, name, detail)).encode())
    sys.stdout.flush()
    sys.stderr.flush()
    _exit(0)


def worker(requests, responses):
    # The untrusted side: no token, no report channel.
    _close(0)
    _close(REPORT)
    exec(compile(open("_guards.py", encoding="utf-8").read(), "_guards.py", "exec"), {})
    g = {"__name__": "__main__", "__file__": "candidate.py", "__builtins__": builtins}
    try:
        with open("candidate.py", encoding="utf-8") as f:
            exec(compile(f.read(), "candidate.py", "exec"), g)
        fn = g[ENTRY]
    except BaseException as e:
        traceback.print_exc()
        send(responses, ("load_error", type(e).__name__, str(e)[:2000]))
        _exit(0)
    send(responses, ("ready",))
    while True:
        req = recv(requests)
        if req is None:
            _exit(0)
        args, kwargs = req
        try:
            r = fn(*args, **kwargs)
        except BaseException as e:
            send(responses, ("error", type(e).__name__, str(e)[:2000]))
            continue
        if not plain(r):
            send(responses, ("non_plain", type(r).__name__))
            continue
        try:
            send(responses, ("ok", r))
        except ValueError:
            send(responses, ("non_plain", type(r).__name__))


class Ended(BaseException):
    """The worker is gone or broke the protocol: the verdict is already decided."""


def main():
    req_r, req_w = _pipe()
    res_r, res_w = _pipe()
    pid = _fork()
    if pid == 0:
        _close(req_w)
        _close(res_r)
        worker(req_r, res_w)
        _exit(0)
    _close(req_r)
    _close(res_w)
    outcome = {}

    def gone():
        _, status = _waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            outcome["v"] = ("crashed", "the candidate was killed by signal %d" % os.WTERMSIG(status))
        else:
            outcome["v"] = ("exited_early", "the candidate's process exited before the tests ended")
        raise Ended()

    first = recv(res_r)
    if first is None:
        gone()
    if first[0] == "load_error":
        if first[1] in ("SystemExit", "KeyboardInterrupt", "GeneratorExit"):
            verdict("exited_early", "%s while loading the candidate" % first[1])
        verdict("failed", "%s: %s" % (first[1], first[2]))

    def candidate(*args, **kwargs):
        if not plain(args) or not plain(kwargs):
            raise TypeError("onelayer judge: the tests passed a value that is not plain data")
        send(req_w, (args, kwargs))
        r = recv(res_r)
        if r is None:
            gone()
        if r[0] == "ok":
            return r[1]
        if r[0] == "non_plain":
            outcome["v"] = ("non_plain_result", "the candidate returned a %s" % r[1])
            raise Ended()
        name, msg = r[1], r[2]
        if name in ("SystemExit", "KeyboardInterrupt", "GeneratorExit"):
            outcome["v"] = ("exited_early", "%s raised by the candidate" % name)
            raise Ended()
        cls = getattr(builtins, name, None)
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            cls = RuntimeError
            msg = "%s: %s" % (name, msg)
        raise cls(msg)

    g = {"__name__": "__main__", "__builtins__": builtins}
    try:
        with open("trusted.py", encoding="utf-8") as f:
            exec(compile(f.read(), "trusted.py", "exec"), g)
    except Exception:
        pass  # a prompt that does not run alone: the tests will say what they miss
    g[ENTRY] = candidate
    try:
        with open("test.py", encoding="utf-8") as f:
            exec(compile(f.read(), "test.py", "exec"), g)
        g["check"](candidate)
    except Ended:
        verdict(*outcome["v"])
    except BaseException as e:
        if "v" in outcome:  # the candidate's end, swallowed by the tests
            verdict(*outcome["v"])
        traceback.print_exc()
        verdict("failed", "%s: %s" % (type(e).__name__, e))
    if "v" in outcome:  # swallowed by the tests, which then passed
        verdict(*outcome["v"])
    verdict("passed")


main()
