# The persistent worker behind `--reward-fn FILE.py[:NAME]` (reward_fn.rs).
#
# argv: FILE NAME. Imports FILE as a module, looks up NAME, then answers one JSON
# request per line on stdin with one JSON reply per line on the protocol channel:
#   -> {"id": 7, "kwargs": {...}}          call NAME(**kwargs)
#   <- {"id": 7, "result": <plain JSON>}   numbers as floats, dicts and lists kept
#   <- {"id": 7, "error": "ValueError: boom (rewards.py line 12)"}
# First line out: {"ready": true} or {"fatal": "..."} (the file or name is wrong).
# The user's prints go to stderr: fd 1 is moved to stderr before the import, and
# the protocol runs on a private duplicate of the original stdout.
import importlib.util
import json
import math
import os
import sys
import traceback

_proto = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr


def _send(obj):
    _proto.write(json.dumps(obj) + "\n")
    _proto.flush()


def _where(exc, path):
    """The innermost frame of the traceback inside the user's file."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
    if not frames:
        return ""
    f = frames[-1]
    return f" ({os.path.basename(path)} line {f.lineno}, in {f.name})"


def _plain(v):
    """JSON-ready copy of a result: numbers as floats, containers kept, other
    values (numpy scalars have __float__) as floats or strings."""
    if v is None or isinstance(v, (str, bool)):
        return v
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(float(v)) else str(float(v))
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "tolist"):
        return _plain(v.tolist())
    if hasattr(v, "__float__"):
        try:
            return _plain(float(v))
        except Exception:
            pass
    return {"__type__": type(v).__name__}


def main():
    path, name = os.path.abspath(sys.argv[1]), sys.argv[2]
    try:
        spec = importlib.util.spec_from_file_location("onelayer_reward_fn", path)
        if spec is None or spec.loader is None:
            raise ImportError("not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules["onelayer_reward_fn"] = module
        sys.path.insert(0, os.path.dirname(path))
        spec.loader.exec_module(module)
    except BaseException as e:
        _send({"fatal": f"cannot import it: {type(e).__name__}: {e}{_where(e, path)}"})
        return
    fn = getattr(module, name, None)
    if not callable(fn):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        _send({"fatal": f"defines no function {name!r} (functions: {', '.join(found) or 'none'})"})
        return
    _send({"ready": True})
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            result = fn(**req["kwargs"])
            _send({"id": req["id"], "result": _plain(result)})
        except BaseException as e:  # noqa: BLE001 - every failure is reported
            msg = str(e).splitlines()[0] if str(e) else ""
            _send({"id": req["id"], "error": f"{type(e).__name__}: {msg}{_where(e, path)}"})
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                return


main()
