"""Synthetic tasks of the demo model: small problems that cannot be solved without attention.

Every answer token is a function of prompt tokens elsewhere in the sequence (the value bound to the queried
key, wherever that pair sits; the character at the same or the mirrored place of a string of varying
length; the digits of both operands and the carry), so a model that solves them must move information
between positions, which is what attention heads do and what head attribution measures.

- `kv`: key-value retrieval, `b=41,q=07,x=93;q` -> `07` (2-4 pairs): the queried key ends the prompt, so the
  position that predicts the first answer token (logits are shifted) holds the key to look up.
- `copy`: copy a string of 4-8 letters, `copy:hgqe=` -> `hgqe`.
- `reverse`: reverse a string of 4-8 letters, `rev:hgqe=` -> `eqgh`.
- `add`: addition of two-digit numbers, the sum written with three digits (`47+85=` -> `132`,
  `12+30=` -> `042`) so that every digit sits at a fixed offset from the `+` and `=` signs and the answer's
  length leaks nothing about its value.

Train and held-out examples are kept apart by a hash of the prompt (`is_heldout`), not by seeds alone: the
training stream rejects held-out prompts, and evaluation and the demo dataset use only held-out prompts.
"""

from __future__ import annotations

import json
import random
import string
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

Example = dict[str, str]

TASKS: tuple[str, ...] = ("kv", "copy", "reverse", "add")

KV_PAIRS = (2, 4)  # inclusive range of key-value pairs in a retrieval prompt
KV_VALUE_DIGITS = 2
STRING_LENGTHS = (4, 8)  # inclusive range of string lengths for copy and reverse
ADD_WIDTH = 2  # operands have ADD_WIDTH digits; the sum is written with ADD_WIDTH + 1
# Training mixes tasks in these proportions: retrieval takes the longest to learn, addition the shortest.
TRAIN_WEIGHTS: dict[str, float] = {"kv": 0.4, "copy": 0.2, "reverse": 0.25, "add": 0.15}
HELDOUT_BUCKETS = 10  # one prompt in HELDOUT_BUCKETS is held out

DATASET_SEED = 20240601  # seed of the shipped demo dataset; training streams use their own seeds
DATASET_PER_TASK = 150


def kv_example(rng: random.Random) -> Example:
    """Key-value retrieval: distinct one-letter keys bound to two-digit values, then a query key."""
    n_pairs = rng.randint(*KV_PAIRS)
    keys = rng.sample(string.ascii_lowercase, n_pairs)
    values = ["".join(rng.choice(string.digits) for _ in range(KV_VALUE_DIGITS)) for _ in keys]
    query = rng.randrange(n_pairs)
    pairs = ",".join(f"{key}={value}" for key, value in zip(keys, values, strict=True))
    return {"prompt": f"{pairs};{keys[query]}", "answer": values[query], "task": "kv"}


def _random_string(rng: random.Random) -> str:
    length = rng.randint(*STRING_LENGTHS)
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(length))


def copy_example(rng: random.Random) -> Example:
    """Copy a random lowercase string."""
    text = _random_string(rng)
    return {"prompt": f"copy:{text}=", "answer": text, "task": "copy"}


def reverse_example(rng: random.Random) -> Example:
    """Reverse a random lowercase string."""
    text = _random_string(rng)
    return {"prompt": f"rev:{text}=", "answer": text[::-1], "task": "reverse"}


def add_example(rng: random.Random) -> Example:
    """Add two numbers of ADD_WIDTH digits; the sum is zero-padded to ADD_WIDTH + 1 digits."""
    low, high = 10 ** (ADD_WIDTH - 1), 10**ADD_WIDTH - 1
    a, b = rng.randint(low, high), rng.randint(low, high)
    prompt = f"{a:0{ADD_WIDTH}d}+{b:0{ADD_WIDTH}d}="
    return {"prompt": prompt, "answer": f"{a + b:0{ADD_WIDTH + 1}d}", "task": "add"}


GENERATORS: dict[str, Callable[[random.Random], Example]] = {
    "kv": kv_example,
    "copy": copy_example,
    "reverse": reverse_example,
    "add": add_example,
}


def is_heldout(example: Example) -> bool:
    """Whether an example's prompt belongs to the held-out split (a stable hash, the same in every run)."""
    key = f"{example['task']}\t{example['prompt']}".encode()
    return zlib.crc32(key) % HELDOUT_BUCKETS == 0


def sample(task: str, rng: random.Random, heldout: bool) -> Example:
    """Draw one example of `task` from the requested split (rejection sampling on `is_heldout`)."""
    generate = GENERATORS[task]
    while True:
        example = generate(rng)
        if is_heldout(example) == heldout:
            return example


def stream(seed: int, heldout: bool = False, weights: dict[str, float] | None = None) -> Iterator[Example]:
    """Endless seeded stream of examples, task drawn with probability `weights[task]` (uniform if None)."""
    rng = random.Random(seed)
    names = list(weights or TASKS)
    probs = [weights[name] for name in names] if weights else None
    while True:
        yield sample(rng.choices(names, probs)[0], rng, heldout)


def heldout_examples(task: str, count: int, seed: int) -> list[Example]:
    """`count` distinct held-out examples of one task (distinct prompts), in a seeded order."""
    rng = random.Random(f"{seed}:{task}")
    seen: set[str] = set()
    examples: list[Example] = []
    while len(examples) < count:
        example = sample(task, rng, heldout=True)
        if example["prompt"] not in seen:
            seen.add(example["prompt"])
            examples.append(example)
    return examples


def demo_dataset(seed: int = DATASET_SEED, per_task: int = DATASET_PER_TASK) -> list[Example]:
    """The demo dataset: `per_task` held-out examples of each task, tasks interleaved."""
    per = [heldout_examples(task, per_task, seed) for task in TASKS]
    return [group[i] for i in range(per_task) for group in per]


def write_dataset(path: str | Path, seed: int = DATASET_SEED, per_task: int = DATASET_PER_TASK) -> Path:
    """Write the demo dataset as JSONL (one `{"prompt", "answer", "task"}` object per line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for example in demo_dataset(seed, per_task):
            handle.write(json.dumps(example, sort_keys=True) + "\n")
    return path


def read_dataset(path: str | Path) -> list[Example]:
    """Read a JSONL dataset written by `write_dataset`."""
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
