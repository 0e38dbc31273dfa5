#!/usr/bin/env python3
"""The built-in `guess` environment (src/env/guess.rs) as an external environment:
an example of the JSON-lines protocol of src/env/external.rs. Standard library only.

    engine run --env "python3 examples/envs/guess_env.py" --algo gigpo ...

Pass --plain for the English wording (chat models); the default is the terse
wording of the built-in demo model's alphabet.
"""
import json
import sys

MASK = (1 << 64) - 1


def mix64(x):
    """splitmix64's finaliser, as crate::sampling::mix64."""
    x = (x + 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def secret(task):
    return mix64(task ^ 0x9E55) % 10


def main():
    plain = "--plain" in sys.argv[1:]
    words = {
        "start": "I am thinking of a whole number from 0 to 9. Guess it: reply with a single digit. After each guess I say whether the number is higher or lower."
        if plain else " ",
        "bad": "Please reply with a single digit." if plain else " ",
        "right": "Correct!" if plain else "=",
        "higher": "Higher." if plain else "+",
        "lower": "Lower." if plain else "-",
    }
    episodes = {}  # episode id -> [secret, anchor]
    for line in sys.stdin:
        req = json.loads(line)
        op = req.get("op")
        if op == "close":
            break
        if op == "end":
            episodes.pop(req["episode"], None)
            continue
        if op == "reset":
            episodes[req["episode"]] = [secret(req["task"]), ""]
            reply = {"observation": words["start"], "anchor": ""}
        elif op == "step":
            if req["episode"] not in episodes:
                reply = {"error": f"no live episode {req['episode']}"}
            else:
                state = episodes[req["episode"]]
                digits = [c for c in req["action"] if c.isdigit()]
                reward, done = 0.0, False
                if not digits:
                    text, mark = words["bad"], "?"
                else:
                    g = int(digits[0])
                    if g == state[0]:
                        text, mark, reward, done = words["right"], f"{g}=", 1.0, True
                    elif g < state[0]:
                        text, mark = words["higher"], f"{g}+"
                    else:
                        text, mark = words["lower"], f"{g}-"
                state[1] += mark
                reply = {"observation": text, "anchor": state[1], "reward": reward, "done": done}
        else:
            reply = {"error": f"unknown op {op!r}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
