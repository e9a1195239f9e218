"""Datasets: IDX reader, registry, data-dir resolution, checksums, task sampler.

Images are held as uint8 ``[N, 784]`` and come out as float32 scaled to [0, 1] (EMNIST
transposed upright; :meth:`Dataset.rows`), labels as int64 ``[N]``. Every random draw comes from a
generator made by :func:`generator_for`, keyed on (seed, episode, stream), so a
population member's draws do not depend on which other members run beside it,
and a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import torch

from plastcli.core.vocabulary import REGISTRY  # name -> split -> (images, labels); no torch there
from plastcli.data_cache import cached_arrays
from plastcli.errors import PlastError

ENV_VAR = "PLAST_DATA"

TRANSPOSED = {"emnist-balanced", "emnist-bymerge", "emnist-byclass"}

_IDX_TYPES = {0x08: np.uint8}


# --------------------------------------------------------------------------- files


def known_sums() -> dict[str, str]:
    """Relative path -> sha256, from the SHA256SUMS file shipped with the package."""
    text = (Path(__file__).parent / "SHA256SUMS").read_text()
    sums = {}
    for line in text.splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.strip()] = digest
    return sums


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "plast" / "data"


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """``--data-dir`` > ``$PLAST_DATA`` > the per-user cache directory."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return default_cache_dir()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@lru_cache(maxsize=64)
def _verified(path: str, mtime: float, size: int) -> str:
    return sha256_of(Path(path))


def verify_file(data_dir: Path, rel: str) -> str:
    """Return the file's sha256; raise PlastError if missing or not the known content."""
    path = data_dir / rel
    expected = known_sums().get(rel)
    if not path.is_file():
        want = f" (expected sha256 {expected})" if expected else ""
        raise PlastError(f"data file missing: {path}{want}; set --data-dir or ${ENV_VAR}, "
                         f"or {how_to_get(rel, data_dir)}")
    st = path.stat()
    digest = _verified(str(path.resolve()), st.st_mtime, st.st_size)
    if expected is not None and digest != expected:
        raise PlastError(f"data file corrupt: {path} has sha256 {digest}, expected {expected}")
    return digest


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw), validating its header.

    Returns a uint8 array shaped by the header's dimensions.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise PlastError(f"{path}: broken gzip stream ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise PlastError(f"{path}: not an IDX file (bad magic number)")
    dtype = _IDX_TYPES.get(raw[2])
    if dtype is None:
        raise PlastError(f"{path}: IDX element type 0x{raw[2]:02x} not supported (only 0x08)")
    ndim = raw[3]
    if ndim < 1 or len(raw) < 4 + 4 * ndim:
        raise PlastError(f"{path}: IDX header truncated")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    count = int(np.prod(dims))
    body = raw[4 + 4 * ndim :]
    if len(body) != count:
        raise PlastError(f"{path}: IDX body has {len(body)} bytes, header says {count}")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


@dataclass
class Dataset:
    """An image dataset held in memory.

    raw: the images as held, uint8 pixel levels ``[N, 784]`` (scaled to [0, 1] when read)
    or float32 ``[N, 784]`` in [0, 1]; labels: int64 ``[N]``. Read rows with :meth:`rows`,
    the whole set with :attr:`images`.
    """

    name: str
    split: str
    raw: torch.Tensor
    labels: torch.Tensor
    n_classes: int
    sha256: dict[str, str]

    def rows(self, idx) -> torch.Tensor:
        """float32 images ``[*idx.shape, 784]`` in [0, 1]. Only these rows are scaled (a task
        sampler never makes the float copy of the whole set: 59 MB for P1's capped EMNIST,
        and tens of ms of page faults at every start); the values equal :attr:`images`'s."""
        x = self.raw[idx]
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x

    @cached_property
    def images(self) -> torch.Tensor:
        """float32 ``[N, 784]`` in [0, 1], the whole set (scaled once, on first use)."""
        return self.rows(slice(None))


def load_dataset(name: str, split: str, data_dir: str | Path | None = None,
                 per_class_cap: int | None = None, cap_seed: int = 0) -> Dataset:
    """Load (and checksum) one split of a registered dataset; with ``per_class_cap``, only
    the images :func:`class_indices` keeps for it, in their original order (so a
    :class:`TaskSampler` with the same cap draws the same images as from the whole set).
    Decoded arrays are cached (plastcli/data_cache.py)."""
    if name not in REGISTRY:
        raise PlastError(f"unknown dataset '{name}'; allowed: {', '.join(REGISTRY)}")
    if split not in REGISTRY[name]:
        raise PlastError(f"dataset '{name}' has no '{split}' split; allowed: "
                         f"{', '.join(REGISTRY[name])}")
    root = resolve_data_dir(data_dir)
    img_rel, lab_rel = REGISTRY[name][split]
    sums = {rel: verify_file(root, rel) for rel in (img_rel, lab_rel)}
    return _load_arrays(name, split, str(root), img_rel, lab_rel, tuple(sums.items()),
                        per_class_cap, cap_seed)


@lru_cache(maxsize=4)
def _load_arrays(name, split, root, img_rel, lab_rel, sums, cap, cap_seed) -> Dataset:
    def decode() -> dict[str, np.ndarray]:
        images = read_idx(Path(root) / img_rel)
        labels = read_idx(Path(root) / lab_rel)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise PlastError(f"{Path(root) / img_rel}: images {images.shape} do not match "
                             f"labels {labels.shape}")
        if name in TRANSPOSED:
            images = images.transpose(0, 2, 1)  # NIST EMNIST is stored transposed
        images = np.ascontiguousarray(images).reshape(len(images), -1)
        if cap is not None:
            y = torch.from_numpy(labels.astype(np.int64))
            keep = torch.cat(class_indices(y, int(y.max()) + 1, cap, cap_seed)).sort().values
            images, labels = images[keep.numpy()], labels[keep.numpy()]
        return {"images": images, "labels": labels}

    source = "".join(digest[:16] for _, digest in sums)
    arrays = cached_arrays(f"{name}-{split}-cap{cap}-{cap_seed}-{source}", decode)
    images = arrays["images"]  # uint8, scaled to [0, 1] as rows are read (Dataset.rows)
    x = torch.from_numpy(images if images.flags.writeable else images.copy())
    y = torch.from_numpy(arrays["labels"].astype(np.int64))
    return Dataset(name, split, x, y, int(y.max()) + 1, dict(sums))


# --------------------------------------------------------------------------- randomness

STREAMS = {"task": 1, "init": 2, "order": 3, "cap": 4, "stream": 5, "val": 6, "grid": 7,
           "theta_jitter": 8, "init_recurrent": 9}


def generator_for(seed: int, episode: int, stream: str) -> torch.Generator:
    """A CPU generator that is a pure function of (seed, episode, stream)."""
    state = np.random.SeedSequence([int(seed), int(episode), STREAMS[stream]]).generate_state(2)
    g = torch.Generator()
    g.manual_seed(int(state[0]) << 32 | int(state[1]))
    return g


def class_indices(labels: torch.Tensor, n_classes: int, cap: int | None,
                  cap_seed: int) -> list[torch.Tensor]:
    """Per class, the indices usable for tasks: a fixed seeded subset of ``cap`` (or all)."""
    g = generator_for(cap_seed, 0, "cap")
    out = []
    for c in range(n_classes):
        idx = torch.nonzero(labels == c).flatten()
        if cap is not None:
            if len(idx) < cap:
                raise PlastError(f"class {c} has only {len(idx)} images, fewer than the cap {cap}")
            idx = idx[torch.randperm(len(idx), generator=g)[:cap]].sort().values
        out.append(idx)
    return out


@dataclass
class Episode:
    """One few-shot task per population member.

    x_train ``[P, M*K, 784]`` in online order, y_train ``[P, M*K]``;
    x_query ``[P, M*Q, 784]``, y_query ``[P, M*Q]``. Labels are original class ids.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor


class TaskSampler:
    """M-way tasks: M classes without replacement, K+Q distinct images per class,
    drawn afresh each episode, training order shuffled (SPEC §4)."""

    def __init__(self, data: Dataset, classes: int, train_per_class: int, query_per_class: int,
                 per_class_cap: int | None, cap_seed: int):
        self.data = data
        self.m, self.k, self.q = classes, train_per_class, query_per_class
        self.pools = class_indices(data.labels, data.n_classes, per_class_cap, cap_seed)
        small = min(len(p) for p in self.pools)
        if self.k + self.q > small:
            raise PlastError(f"{data.name}: a class has only {small} images, fewer than "
                             f"train_per_class + query_per_class = {self.k + self.q}")

    def member_indices(self, seed: int, episode: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Dataset indices (train in online order ``[M*K]``, query ``[M*Q]``) of one member."""
        g = generator_for(seed, episode, "task")
        chosen = torch.randperm(len(self.pools), generator=g)[: self.m]
        train, query = [], []
        for c in chosen.tolist():
            pool = self.pools[c]
            pick = pool[torch.randperm(len(pool), generator=g)[: self.k + self.q]]
            train.append(pick[: self.k])
            query.append(pick[self.k :])
        train = torch.cat(train)
        order = torch.randperm(len(train), generator=generator_for(seed, episode, "order"))
        return train[order], torch.cat(query)

    def sample(self, seeds: list[int], episode: int, device: torch.device) -> Episode:
        tr, qu = zip(*(self.member_indices(s, episode) for s in seeds), strict=True)
        tr, qu = torch.stack(tr), torch.stack(qu)
        d, y = self.data, self.data.labels
        return Episode(d.rows(tr).to(device), y[tr].to(device), d.rows(qu).to(device),
                       y[qu].to(device))


# --------------------------------------------------------------------------- check / fetch


def check_all(data_dir: Path) -> list[tuple[str, str, str]]:
    """(relative path, ok|missing|corrupt|unverified, sha256) for every registered file."""
    sums = known_sums()
    names = sorted({rel for splits in REGISTRY.values() for pair in splits.values()
                    for rel in pair} | {k for k in sums if not k.endswith(".md")})
    rows = []
    for rel in names:
        path = data_dir / rel
        if not path.is_file():
            rows.append((rel, "missing", ""))
            continue
        digest = sha256_of(path)
        if rel not in sums:
            rows.append((rel, "unverified", digest))
        else:
            rows.append((rel, "ok" if digest == sums[rel] else "corrupt", digest))
    return rows


_TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
FETCHABLE = ("mnist", "fashion-mnist", "emnist-balanced")
NIST_EMNIST = ("https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip (linked from "
               "https://www.nist.gov/itl/products-and-services/emnist-dataset)")


def dataset_of(rel: str) -> str | None:
    """The registered dataset a data file belongs to."""
    for name, splits in REGISTRY.items():
        if any(rel in pair for pair in splits.values()):
            return name
    return None


def by_hand(name: str, data_dir: Path | None = None) -> str:
    """How to place a dataset that ``plast data fetch`` cannot download."""
    rels = [rel for pair in REGISTRY[name].values() for rel in pair]
    files = ", ".join(Path(rel).name for rel in rels)
    folder = Path(rels[0]).parent
    dest = data_dir / folder if data_dir is not None else f"DATA_DIR/{folder}"
    return (f"{name} must be placed by hand: download {NIST_EMNIST}, unzip it and copy "
            f"{files} from its gzip/ folder into {dest}/")


def how_to_get(rel: str, data_dir: Path | None = None) -> str:
    """The hint for a missing data file: the fetch command, or where to get it by hand."""
    name = dataset_of(rel)
    if name in FETCHABLE:
        return f"run 'plast data fetch {name}'"
    if name is not None:
        return by_hand(name, data_dir)
    return "copy it into the data directory"


def fetch_listing(data_dir: Path | None = None) -> list[str]:
    """What ``plast data fetch`` can download, and what must be placed by hand."""
    lines = [f"can fetch (through torchvision, when online): {', '.join(FETCHABLE)}"]
    lines += [by_hand(n, data_dir) for n in REGISTRY if n not in FETCHABLE]
    return lines


def fetch(name: str, data_dir: Path):
    """Download a dataset with torchvision and lay it out as plast expects; yields messages."""
    if name in REGISTRY and name not in FETCHABLE:
        raise PlastError(f"cannot fetch '{name}': {by_hand(name, data_dir)}")
    if name not in FETCHABLE:
        raise PlastError(f"cannot fetch '{name}'; allowed: {', '.join(FETCHABLE)}")
    try:
        import torchvision.datasets as tvd  # optional; imported only here
    except Exception as exc:  # noqa: BLE001 - any import failure means "cannot fetch"
        raise PlastError(f"plast data fetch needs torchvision (pip install 'plast[download]'); "
                         f"it could not be imported here ({type(exc).__name__})") from None
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            if name == "emnist-balanced":
                tvd.EMNIST(tmp, split="balanced", train=True, download=True)
            else:
                getattr(tvd, _TORCHVISION[name])(tmp, train=True, download=True)
                getattr(tvd, _TORCHVISION[name])(tmp, train=False, download=True)
        except Exception as exc:  # noqa: BLE001 - network errors come in many types
            raise PlastError(f"download of {name} failed ({type(exc).__name__}: {exc}); "
                             f"are you online? Otherwise copy the IDX files into {data_dir}"
                             ) from None
        wanted = {Path(rel).name: rel for split in REGISTRY[name].values() for rel in split}
        for found in Path(tmp).rglob("*"):
            if found.name in wanted:
                dest = data_dir / wanted[found.name]
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(found, dest)
                yield f"wrote {dest}"
