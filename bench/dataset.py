"""Deterministic benchmark dataset: a mixed tree like a home directory, and a ~5% mutation.

The same ``seed`` and ``scale`` always give byte-identical trees (``random.Random`` only,
no clock, no ``os.urandom``), so every tool in a comparison backs up exactly the same data
and a run can be reproduced elsewhere. At ``--scale 1`` the tree is about 1 GB:

- ``small/``: ~20,000 text files of 0.5-16 KiB (log-uniform) in nested directories,
- ``medium/``: text, semi-compressible binary and random files of 100 KB-8 MB (~300 MB),
- ``large/``: 4 random files of 128 MiB (the last one repeats a block of the first),
- ``copies/``: duplicates of some small and medium files (with the repeated block, about
  10% of the bytes are duplicate content),
- a few symlinks (relative, absolute-free, one dangling), an empty file, an empty dir.

``mutate`` then changes about ``fraction`` of the bytes the way real edits do: rewrites,
appends, inserts in the middle of large files (which shifts everything after them, the
case content-defined chunking exists for), in-place overwrites, new and deleted files.

Usage: ``python bench/dataset.py DIR [--scale 0.05] [--seed 42] [--mutate]``.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB
MB = 1_000_000

#: Sizes at scale 1; counts and byte budgets are multiplied by ``scale``.
SMALL_FILES = 20_000
SMALL_RANGE = (512, 16 * KiB)
MEDIUM_BYTES = 300 * MB
MEDIUM_RANGE = (100 * 1000, 8 * MB)
LARGE_FILES = 4
LARGE_SIZE = 128 * MiB
#: Fractions of the unique bytes that reappear as copies or repeated blocks (~10% total).
COPY_SMALL = 0.02
COPY_MEDIUM = 0.05
REPEATED_BLOCK = 0.03
#: Inserts per large file in ``mutate`` (a few edits, each shifting the rest of the file).
LARGE_INSERTS = 3
#: randbytes turns one huge int into bytes; keep each call small enough to be fast.
RAND_BLOCK = 1 * MiB

SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "an", "el", "is", "or", "um",
             "ba", "de", "fi", "go", "hu", "ja", "ke", "li", "mo", "nu", "pa", "qu", "re",
             "si", "to", "va", "we", "xi", "yo", "ze", "th", "ch", "st")
COMMON = ("the", "of", "and", "to", "a", "in", "is", "it", "that", "for", "on", "with", "as",
          "was", "be", "by", "this", "are", "or", "from", "def", "return", "self", "import",
          "if", "else", "None", "True", "value", "data", "file", "backup", "chunk", "key")


def make_vocabulary(rng: random.Random, size: int = 6000) -> list[str]:
    """A Zipf-like token list: sampling it uniformly gives realistic word frequencies, so
    text compresses about as well as prose or source code (zstd ~2.5-3x), not 100x."""
    words = list(COMMON)
    while len(words) < size:
        words.append("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))))
    tokens: list[str] = []
    for rank, word in enumerate(words):
        tokens.extend([word] * max(1, int(60 / (rank + 1) ** 0.9)))
    # punctuation and line breaks, at roughly natural rates
    tokens.extend(["the.\n", "data,", "value;", "\n", "\n\n", "it.\n", "()", "= 0\n"] * 40)
    return tokens


class Generator:
    """Seeded sources of text and binary bytes (one RNG, so the order of calls matters)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.tokens = make_vocabulary(self.rng)

    def text(self, size: int) -> bytes:
        """``size`` bytes of word salad (about 6.5 bytes per word)."""
        if size <= 0:
            return b""
        out = " ".join(self.rng.choices(self.tokens, k=size // 6 + 8)).encode("ascii")
        while len(out) < size:
            out += b" " + " ".join(self.rng.choices(self.tokens, k=size // 6 + 8)).encode()
        return out[:size]

    def random(self, size: int) -> bytes:
        """Incompressible bytes (like media files or already-compressed archives)."""
        if size <= RAND_BLOCK:
            return self.rng.randbytes(size)
        full, rest = divmod(size, RAND_BLOCK)
        parts = [self.rng.randbytes(RAND_BLOCK) for _ in range(full)]
        parts.append(self.rng.randbytes(rest))
        return b"".join(parts)

    def binary(self, size: int) -> bytes:
        """Semi-compressible binary (databases, executables): random, 16-symbol and zero
        blocks mixed, so it compresses to roughly half, not to nothing."""
        parts: list[bytes] = []
        left = size
        low_entropy = bytes.maketrans(bytes(range(256)), bytes(b & 0x0F for b in range(256)))
        while left > 0:
            n = min(left, self.rng.randint(4 * KiB, 256 * KiB))
            kind = self.rng.random()
            if kind < 0.35:
                parts.append(self.rng.randbytes(n))
            elif kind < 0.85:
                parts.append(self.rng.randbytes(n).translate(low_entropy))
            else:
                parts.append(bytes(n))
            left -= n
        return b"".join(parts)

    def log_uniform(self, low: int, high: int) -> int:
        return int(math.exp(self.rng.uniform(math.log(low), math.log(high))))

    def name(self) -> str:
        return "-".join(self.rng.choice(self.tokens).strip(".,;()=\n 0") or "x"
                        for _ in range(self.rng.randint(1, 2)))


@dataclass
class DatasetInfo:
    """What ``generate`` made; ``bytes`` counts regular-file contents only."""

    root: str
    scale: float
    seed: int
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    duplicate_bytes: int = 0
    seconds: float = 0.0


def _write(path: Path, data: bytes, info: DatasetInfo) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    info.files += 1
    info.bytes += len(data)


def _small_dirs(gen: Generator, root: Path, count: int) -> list[Path]:
    """A nested directory tree (depth up to 6) with ~40 files per directory on average."""
    dirs = [root]
    depth = {root: 0}
    for i in range(max(3, count // 40)):
        parent = gen.rng.choice([d for d in dirs[-50:] if depth[d] < 6] or [root])
        child = parent / f"{gen.name()}-{i:04d}"
        dirs.append(child)
        depth[child] = depth[parent] + 1
    return dirs


def generate(root: Path, scale: float = 1.0, seed: int = 42) -> DatasetInfo:
    """Write the dataset into ``root`` (which must not exist or be empty)."""
    started = time.perf_counter()
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty")
    root.mkdir(parents=True, exist_ok=True)
    gen = Generator(seed)
    info = DatasetInfo(root=str(root), scale=scale, seed=seed)

    # small text files in nested directories
    n_small = max(20, round(SMALL_FILES * scale))
    dirs = _small_dirs(gen, root / "small", n_small)
    small: list[Path] = []
    for i in range(n_small):
        ext = gen.rng.choice(("txt", "py", "md", "c", "json"))
        path = gen.rng.choice(dirs) / f"{gen.name()}-{i:05d}.{ext}"
        _write(path, gen.text(gen.log_uniform(*SMALL_RANGE)), info)
        small.append(path)

    # medium files: a byte budget filled with text, semi-compressible binary and random
    medium: list[Path] = []
    budget = max(2 * MEDIUM_RANGE[0], int(MEDIUM_BYTES * scale))
    i = 0
    while budget > 0:
        size = min(budget, gen.log_uniform(*MEDIUM_RANGE))
        kind = gen.rng.random()
        if kind < 0.35:
            data, ext = gen.text(size), "log"
        elif kind < 0.7:
            data, ext = gen.binary(size), "db"
        else:
            data, ext = gen.random(size), "jpg"
        path = root / "medium" / f"sub{i % 7}" / f"{gen.name()}-{i:04d}.{ext}"
        _write(path, data, info)
        medium.append(path)
        budget -= size
        i += 1

    # large random files; the last repeats a block of the first (dedup inside the data)
    large_size = max(256 * KiB, int(LARGE_SIZE * scale))
    unique = info.bytes + LARGE_FILES * large_size
    block = min(large_size // 2, int(unique * REPEATED_BLOCK))
    first = b""
    for n in range(LARGE_FILES):
        path = root / "large" / f"disk{n}.img"
        if n == LARGE_FILES - 1 and first:
            head = gen.random((large_size - block) // 2)
            data = head + first[large_size // 4: large_size // 4 + block]
            data += gen.random(large_size - len(data))
            info.duplicate_bytes += block
        else:
            data = gen.random(large_size)
        if n == 0:
            first = data
        _write(path, data, info)
    del first

    # copies: whole files duplicated elsewhere in the tree
    for pool, share, where in ((small, COPY_SMALL, "small"), (medium, COPY_MEDIUM, "medium")):
        target = int(unique * share)
        copied = 0
        for src in gen.rng.sample(pool, len(pool)):
            if copied >= target:
                break
            size = src.stat().st_size
            if size > target - copied and copied:
                continue
            dest = root / "copies" / where / src.relative_to(root / where)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
            info.files += 1
            info.bytes += size
            info.duplicate_bytes += size
            copied += size

    # odds and ends every backup tool must get right
    special = root / "special"
    special.mkdir()
    (special / "empty-dir").mkdir()
    _write(special / "empty-file", b"", info)
    os.symlink("../" + small[0].relative_to(root).as_posix(), special / "link-to-file")
    os.symlink("../medium", special / "link-to-dir")
    os.symlink("does-not-exist", special / "dangling")
    info.symlinks = 3
    info.dirs = sum(len(d) for _, d, _ in os.walk(root))
    info.seconds = round(time.perf_counter() - started, 2)
    return info


@dataclass
class MutationInfo:
    """What ``mutate`` changed; ``changed_bytes`` counts new bytes written."""

    changed_bytes: int = 0
    rewritten: int = 0
    appended: int = 0
    inserted: int = 0
    overwritten: int = 0
    new_files: int = 0
    deleted: int = 0
    details: dict[str, int] = field(default_factory=dict)


def _classify(root: Path, path: Path, size: int) -> str:
    """small / medium / large by the generator's layout, else by size."""
    top = path.relative_to(root).parts[0]
    if top in ("small", "medium", "large"):
        return top
    if top == "copies":
        return "copy"
    return "small" if size <= 16 * KiB else "large" if size >= 32 * MiB else "medium"


def _insert(path: Path, edits: list[tuple[int, bytes]]) -> None:
    """Insert bytes at offsets in place (same inode): shifts the rest of the file."""
    with open(path, "r+b") as f:
        for offset, data in sorted(edits, reverse=True):
            f.seek(offset)
            tail = f.read()
            f.seek(offset)
            f.write(data)
            f.write(tail)


def mutate(root: Path, fraction: float = 0.05, seed: int = 7) -> MutationInfo:
    """Change about ``fraction`` of the tree's bytes, deterministically for a given tree.

    Budget split: 15% small-file rewrites, 10% appends, 35% inserts into large files
    (``LARGE_INSERTS`` per file, at random offsets in the middle 3/4, plus one 64 KiB
    in-place overwrite each), 10% in-place overwrites of medium files, 30% new files; and
    about 0.5% of small files plus one medium file are deleted.
    """
    root = Path(root)
    gen = Generator(seed)
    files: dict[str, list[tuple[Path, int]]] = {"small": [], "medium": [], "large": [],
                                                "copy": []}
    dirs: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        if here != root and "special" not in here.parts:
            dirs.append(here)
        for name in sorted(filenames):
            path = here / name
            if path.is_symlink() or "special" in path.parts:
                continue
            size = path.stat().st_size
            files[_classify(root, path, size)].append((path, size))
    total = sum(size for group in files.values() for _, size in group)
    target = max(1, int(total * fraction))
    info = MutationInfo()

    def spend(key: str, n: int) -> None:
        info.changed_bytes += n
        info.details[key] = info.details.get(key, 0) + n

    # rewrite small files with new text of a new size
    small = gen.rng.sample(files["small"], len(files["small"]))
    budget = int(target * 0.15)
    while budget > 0 and small:
        path, _ = small.pop()
        data = gen.text(gen.log_uniform(*SMALL_RANGE))
        path.write_bytes(data)
        info.rewritten += 1
        spend("rewrite", len(data))
        budget -= len(data)

    # append to small and medium text files (logs grow)
    growable = small + [f for f in files["medium"] if f[0].suffix == ".log"]
    gen.rng.shuffle(growable)
    budget = int(target * 0.10)
    while budget > 0 and growable:
        path, size = growable.pop()
        data = gen.text(max(64, min(budget, size // 4 or 256)))
        with open(path, "ab") as f:
            f.write(b"\n" + data)
        info.appended += 1
        spend("append", len(data) + 1)
        budget -= len(data) + 1

    # insert in the middle of large files, and overwrite one region of each
    large = files["large"]
    budget = int(target * 0.35)
    per_file = budget // max(1, len(large))
    for path, size in large:
        cuts = sorted(gen.rng.sample(range(1, per_file), LARGE_INSERTS - 1)) if per_file > 8 else []
        sizes = [b - a for a, b in zip([0, *cuts], [*cuts, per_file], strict=True)]
        edits = [(gen.rng.randrange(size // 8, size - size // 8), gen.random(n))
                 for n in sizes if n > 0]
        if edits:
            _insert(path, edits)
            info.inserted += len(edits)
            spend("insert", sum(len(d) for _, d in edits))
        with open(path, "r+b") as f:
            n = min(64 * KiB, size // 16)
            f.seek(gen.rng.randrange(0, size - n))
            f.write(gen.random(n))
        info.overwritten += 1
        spend("overwrite", n)

    # overwrite regions of medium files in place (databases, VM images)
    medium = gen.rng.sample(files["medium"], len(files["medium"]))
    budget = int(target * 0.10)
    while budget > 0 and medium:
        path, size = medium.pop()
        n = min(budget, max(4 * KiB, size // 10), size)
        with open(path, "r+b") as f:
            f.seek(gen.rng.randrange(0, size - n + 1))
            f.write(gen.binary(n))
        info.overwritten += 1
        spend("overwrite", n)
        budget -= n

    # new files: small text files in existing directories, then some medium ones
    budget = int(target * 0.30)
    small_budget = budget // 2
    i = 0
    while budget > 0:
        if small_budget > 0 and dirs:
            data = gen.text(gen.log_uniform(*SMALL_RANGE))
            path = gen.rng.choice(dirs) / f"new-{gen.name()}-{i:04d}.txt"
            small_budget -= len(data)
        else:
            size = min(budget, gen.log_uniform(*MEDIUM_RANGE))
            data = gen.binary(size) if gen.rng.random() < 0.5 else gen.text(size)
            path = root / "medium" / "new" / f"new-{i:04d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        info.new_files += 1
        spend("new", len(data))
        budget -= len(data)
        i += 1

    # deletions: files that are gone in the next backup
    victims = small[: max(1, len(files["small"]) // 200)] + medium[:1]
    for path, _ in victims:
        path.unlink()
        info.deleted += 1
    return info


def tree_bytes(root: Path) -> tuple[int, int]:
    """(regular files, their total bytes) under ``root``, not following symlinks."""
    count = total = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if not os.path.islink(os.path.join(dirpath, name)):
                count += 1
                total += st.st_size
    return count, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="directory to create (must be empty)")
    parser.add_argument("--scale", type=float, default=1.0, help="1 = about 1 GB")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--mutate", action="store_true",
                        help="mutate an existing tree at ROOT instead of generating one")
    parser.add_argument("--fraction", type=float, default=0.05)
    args = parser.parse_args(argv)
    if args.mutate:
        print(asdict(mutate(args.root, args.fraction, args.seed)))
    else:
        info = generate(args.root, args.scale, args.seed)
        print(f"{info.files} files, {info.dirs} dirs, {info.symlinks} symlinks, "
              f"{info.bytes / MB:.1f} MB ({info.duplicate_bytes / MB:.1f} MB duplicate) "
              f"in {info.seconds:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
